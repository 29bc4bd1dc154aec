package server

import (
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestDiagnoseRemoteSecrets: the remote-secret check fails for a secret the
// topology asks for that is missing or does not authenticate, naming it,
// and ignores the health of secrets nobody asked for (drift reports those).
func TestDiagnoseRemoteSecrets(t *testing.T) {
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  clusters:
  - {name: east, context: east, network: network1}
  - {name: west, context: west, network: network2}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cluster ClusterStatus
		ok      bool
		message string
	}{
		{"healthy", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Healthy: true}}}, true, ""},
		{"missing", ClusterStatus{MissingRemoteSecrets: []string{"istio-system/istio-remote-secret-west"},
			Drift: []string{"secret istio-system/istio-remote-secret-west (reads west) is missing"}}, false, "secret istio-system/istio-remote-secret-west is missing"},
		{"refused", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Error: "401 Unauthorized"}}}, false, "istio-remote-secret-west (401 Unauthorized)"},
		{"unexpected and broken", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{
			{Name: "istio-remote-secret-west", Expected: true, Healthy: true},
			{Name: "istio-remote-secret-north", Error: "no such host"},
		}}, true, ""},
		{"other drift mentioning missing", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Healthy: true}},
			Drift: []string{"secret istio-system/cacerts is missing"}}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cluster
			c.Name, c.Reachable, c.Network = "east", true, "network1"
			checks := Diagnose(m, &Status{Clusters: []ClusterStatus{c}}, time.Now())
			var got *Check
			for i := range checks {
				if checks[i].Name == "remote secrets authenticate" {
					got = &checks[i]
				}
			}
			if got == nil {
				t.Fatalf("no remote-secret check in %+v", checks)
			}
			if got.OK != tc.ok || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, tc.ok, tc.message)
			}
		})
	}
}

// TestIstiodCheck: istiod's own view passes when it knows every cluster the
// cluster's remote secrets name, all synced, and fails naming the cluster
// and status otherwise; a cluster without istiod gets no such check.
func TestIstiodCheck(t *testing.T) {
	west := []RemoteSecretStatus{{Name: "istio-remote-secret-west", Namespace: "istio-system", Target: "west", Expected: true, Healthy: true}}
	view := func(st map[string]string) []IstiodView {
		return []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", RemoteClusters: st}}
	}
	tests := []struct {
		name    string
		cluster ClusterStatus
		want    *bool
		message string
	}{
		{"no istiod", ClusterStatus{RemoteSecrets: west}, nil, ""},
		{"synced", ClusterStatus{RemoteSecrets: west, Istiods: view(map[string]string{"west": "synced"})}, ptrBool(true), "synced: west"},
		{"timeout", ClusterStatus{RemoteSecrets: west, Istiods: view(map[string]string{"west": "timeout"})}, ptrBool(false), "cluster west is timeout"},
		{"timeout names the path", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Namespace: "istio-system", Target: "west", Expected: true, Healthy: true, Path: "direct https://10.0.0.2:6443"}},
			Istiods: view(map[string]string{"west": "timeout"})}, ptrBool(false), "cluster west is timeout (read direct https://10.0.0.2:6443)"},
		{"unknown to istiod", ClusterStatus{RemoteSecrets: west, Istiods: view(map[string]string{})}, ptrBool(false), "no istiod knows cluster west"},
		{"unreadable", ClusterStatus{RemoteSecrets: west, Istiods: []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", Error: "east: pod istio-system/istiod-1: /debug/clusterz: forbidden"}}}, ptrBool(false), "forbidden"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cluster.Name = "east"
			got := istiodCheck(tc.cluster)
			if tc.want == nil {
				if got != nil {
					t.Fatalf("check %+v for a cluster without istiod", *got)
				}
				return
			}
			if got == nil {
				t.Fatal("no check")
			}
			if got.OK != *tc.want || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, *tc.want, tc.message)
			}
			if !got.OK && got.Hint == "" {
				t.Error("a failed check without a hint")
			}
		})
	}
}

func ptrBool(b bool) *bool { return &b }

// TestIstiodCACheck: an istiod that publishes another root than cacerts'
// fails, and one that made itself a CA is named as started before cacerts.
func TestIstiodCACheck(t *testing.T) {
	const root = "aa:bb:cc:dd:ee:ff:00:11"
	view := func(roots []string, selfSigned bool) []IstiodView {
		return []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", Roots: roots, SelfSignedCA: selfSigned}}
	}
	tests := []struct {
		name    string
		cluster ClusterStatus
		ok      *bool
		message string
	}{
		{"no istiod", ClusterStatus{RootFingerprint: root}, nil, ""},
		{"no cacerts", ClusterStatus{Istiods: view(nil, true)}, nil, ""},
		{"plug-in CA", ClusterStatus{RootFingerprint: root, Istiods: view([]string{"00:00", root}, false)}, ptrBool(true), "signs under root"},
		{"another root", ClusterStatus{RootFingerprint: root, Istiods: view([]string{"12:34"}, false)}, ptrBool(false), "not cacerts' root"},
		{"self-signed", ClusterStatus{RootFingerprint: root, Istiods: view([]string{"12:34"}, true)}, ptrBool(false), "started before cacerts existed"},
		{"unreadable istiod is istiodCheck's", ClusterStatus{RootFingerprint: root, Istiods: []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", Error: "forbidden"}}}, ptrBool(true), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cluster.Name = "east"
			got := istiodCACheck(tc.cluster)
			if (got == nil) != (tc.ok == nil) {
				t.Fatalf("check = %+v, want ok %v", got, tc.ok)
			}
			if got == nil {
				return
			}
			if got.OK != *tc.ok || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, *tc.ok, tc.message)
			}
			if !got.OK && !strings.Contains(got.Hint, "delete pod istiod-1") {
				t.Errorf("hint %q does not say how to restart istiod", got.Hint)
			}
		})
	}
}

// TestIstiodNetworksCheck: every network a cluster's istiod serves needs a
// gateway with an address in istiod's networkz; one network needs none.
func TestIstiodNetworksCheck(t *testing.T) {
	gw := func(nets ...string) []IstiodView {
		v := IstiodView{Namespace: "istio-system", Pod: "istiod-1"}
		for _, n := range nets {
			v.Gateways = append(v.Gateways, NetworkGateway{Network: n, Addr: "192.0.2.1", Port: 15443})
		}
		return []IstiodView{v}
	}
	tests := []struct {
		name    string
		istiods []IstiodView
		want    []string
		ok      *bool
		message string
	}{
		{"single network", gw(), []string{"n1"}, nil, ""},
		{"both known", gw("n1", "n2"), []string{"n1", "n2"}, ptrBool(true), "gateways of n1, n2"},
		{"one missing", gw("n1"), []string{"n1", "n2"}, ptrBool(false), "knows no gateway of network n2"},
		{"no address", []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", Gateways: []NetworkGateway{{Network: "n1", Addr: "192.0.2.1"}, {Network: "n2"}}}}, []string{"n1", "n2"}, ptrBool(false), "network n2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := istiodNetworksCheck(ClusterStatus{Name: "east", Istiods: tc.istiods}, tc.want, false)
			if (got == nil) != (tc.ok == nil) {
				t.Fatalf("check = %+v, want ok %v", got, tc.ok)
			}
			if got != nil && (got.OK != *tc.ok || !strings.Contains(got.Message, tc.message)) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, *tc.ok, tc.message)
			}
		})
	}
}

func TestCRLCheck(t *testing.T) {
	now := time.Now()
	current := &CRLInfo{Number: 3, NextUpdate: now.Add(pki.DefaultCRLLifetime), SHA256: "abc", StillTrusted: 1}
	rotatedAway := &CRLInfo{Number: 3, NextUpdate: now.Add(pki.DefaultCRLLifetime), SHA256: "abc"}
	stale := &CRLInfo{Number: 3, NextUpdate: now.Add(time.Hour), SHA256: "abc"}
	// cert-manager mode with the user's issuer: the hub cannot revoke.
	unenforced := &CRLInfo{StillTrusted: 1, Unenforced: "pki.certManager.issuerRef: ..."}
	unenforcedRotatedAway := &CRLInfo{Unenforced: "pki.certManager.issuerRef: ..."}
	for _, tc := range []struct {
		name    string
		crl     *CRLInfo
		cluster string // the cacerts' ca-crl.pem hash
		want    string // "" no check; "ok"; else a message fragment
	}{
		{"nothing revoked: no check", nil, "", ""},
		{"cacerts without ca-crl.pem", current, "", "has no ca-crl.pem"},
		{"cacerts with an older CRL", current, "old", "holds another ca-crl.pem"},
		{"next update close", stale, "abc", "next update is"},
		{"current", current, "abc", "ok"},
		{"current after the root rotated away", rotatedAway, "abc", "ok"},
		{"the user's issuer: revocation is not enforced, said", unenforced, "", "revocation is not enforced"},
		{"the user's issuer after its root rotated away", unenforcedRotatedAway, "", "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck := crlCheck(tc.crl, ClusterStatus{Name: "east", CRLSHA256: tc.cluster}, "istio-system", now)
			switch {
			case tc.want == "":
				if ck != nil {
					t.Errorf("got %+v, want no check", ck)
				}
			case ck == nil:
				t.Fatalf("no check, want %q", tc.want)
			case tc.want == "ok":
				if !ck.OK {
					t.Errorf("failed: %s", ck.Message)
				}
			default:
				if ck.OK || !strings.Contains(ck.Message, tc.want) || ck.Hint == "" {
					t.Errorf("got ok=%v %q (hint %q), want a failure saying %q", ck.OK, ck.Message, ck.Hint, tc.want)
				}
			}
		})
	}
}

// TestDiagnosePaths: per remote secret, check says which way the reader
// reaches the target's API server, passes when that is the spec's
// apiServerAccess and the reader authenticates through it, and fails naming
// the link otherwise, with a hint for the path at fault.
func TestDiagnosePaths(t *testing.T) {
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  clusters:
  - {name: east, context: east, network: network1}
  - {name: west, context: west, network: network2, apiServerAccess: gateway}
`))
	if err != nil {
		t.Fatal(err)
	}
	secret := func(target, path string, healthy bool, e string) RemoteSecretStatus {
		return RemoteSecretStatus{Name: "istio-remote-secret-" + target, Namespace: "istio-system", Target: target, Expected: true, Healthy: healthy, Error: e, Path: path}
	}
	tests := []struct {
		name    string
		reader  string
		rs      RemoteSecretStatus
		ok      bool
		message string
		hint    string
	}{
		{"gateway path, authenticates", "east", secret("west", "via gateway 192.0.2.20:6443", true, ""), true, "west: via gateway 192.0.2.20:6443", ""},
		{"gateway path, unreachable", "east", secret("west", "via gateway 192.0.2.20:6443", false, "connection refused"), false,
			"west: via gateway 192.0.2.20:6443 does not work: connection refused", "Service istio-system/istio-eastwestgateway has port tls-kube-api"},
		{"gateway wanted, secret direct", "east", secret("west", "direct https://10.0.0.2:6443", true, ""), false,
			"west: secret istio-system/istio-remote-secret-west reads it direct https://10.0.0.2:6443, but its apiServerAccess is gateway", "run flotilla apply"},
		{"gateway path to an old address", "east", secret("west", "via gateway 192.0.2.99:6443", true, ""), false,
			"but its east-west gateway's address is 192.0.2.20", "run flotilla apply"},
		{"direct path, authenticates", "west", secret("east", "direct https://10.0.0.1:6443", true, ""), true, "east: direct https://10.0.0.1:6443", ""},
		{"direct path, unreachable", "west", secret("east", "direct https://10.0.0.1:6443", false, "i/o timeout"), false,
			"east: direct https://10.0.0.1:6443 does not work: i/o timeout", "set apiServerAccess: gateway on cluster east"},
		{"direct wanted, secret via gateway", "west", secret("east", "via gateway 192.0.2.10:6443", true, ""), false,
			"but its apiServerAccess is direct", "run flotilla apply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &Status{Clusters: []ClusterStatus{
				{Name: "east", Reachable: true, Network: "network1", GatewayAddress: "192.0.2.10"},
				{Name: "west", Reachable: true, Network: "network2", GatewayAddress: "192.0.2.20"},
			}}
			for i := range st.Clusters {
				if st.Clusters[i].Name == tc.reader {
					st.Clusters[i].RemoteSecrets = []RemoteSecretStatus{tc.rs}
				}
			}
			var got []Check
			for _, ck := range Diagnose(m, st, time.Now()) {
				if ck.Name == "API server path" {
					got = append(got, ck)
				}
			}
			if len(got) != 1 || got[0].Cluster != tc.reader {
				t.Fatalf("path checks %+v, want one for %s", got, tc.reader)
			}
			if got[0].OK != tc.ok || !strings.Contains(got[0].Message, tc.message) || !strings.Contains(got[0].Hint, tc.hint) {
				t.Errorf("check = ok %v %q (hint %q), want ok %v containing %q (hint %q)", got[0].OK, got[0].Message, got[0].Hint, tc.ok, tc.message, tc.hint)
			}
		})
	}
}

// TestCRLUnenforced: the hub says revocation is not enforced exactly where
// the root that signs the intermediates is not the hub's, or istiod, its CA
// off, publishes no CRL to the sidecars.
func TestCRLUnenforced(t *testing.T) {
	for _, tc := range []struct {
		name, pki string
		want      string // "" enforced; else a fragment of the reason
	}{
		{"built-in", "{keyAlgorithm: ECDSA-P256}", ""},
		{"cert-manager, the hub signs as MeshIssuer", "{mode: cert-manager}", ""},
		{"cert-manager with the user's issuer", "{mode: cert-manager, certManager: {issuerRef: {name: corp, kind: ClusterIssuer}}}", "ClusterIssuer corp signs the intermediates"},
		{"cert-manager with the csr-agent", "{mode: cert-manager, certManager: {csrAgent: {image: flotilla:test}}}", "istiod's CA is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  pki: `+tc.pki+`
  clusters:
  - {name: east, context: east, network: network1}
`))
			if err != nil {
				t.Fatal(err)
			}
			p, err := compile(m)
			if err != nil {
				t.Fatal(err)
			}
			got := crlUnenforced(p)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDiagnoseRemotePilotAddress: a remote whose Istio resource sends its
// webhooks and proxies anywhere but its primary's gateway fails "Istio
// resource consistent", naming both addresses; the right address, or a
// gateway address not known yet, passes.
func TestDiagnoseRemotePilotAddress(t *testing.T) {
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: primary-remote
  clusters:
  - {name: east, context: east, network: network1}
  - {name: west, context: west, network: network2, role: remote}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pilot, eastGateway string
		ok                       bool
		message                  string
	}{
		{"primary's gateway", "10.1.101.10", "10.1.101.10", true, ""},
		{"elsewhere", "10.1.101.250", "10.1.101.10", false, `global.remotePilotAddress "10.1.101.250", want east's gateway address 10.1.101.10`},
		{"gateway address not known", "10.1.101.250", "", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &Status{Clusters: []ClusterStatus{
				{Name: "east", Reachable: true, Network: "network1", GatewayAddress: tc.eastGateway, Istio: &IstioStatus{Name: "default"}},
				{Name: "west", Reachable: true, Network: "network2", Istio: &IstioStatus{Name: "default", RemotePilotAddress: tc.pilot}},
			}}
			var got *Check
			for _, c := range Diagnose(m, st, time.Now()) {
				if c.Name == "Istio resource consistent" && c.Cluster == "west" {
					got = &c
				}
			}
			if got == nil {
				t.Fatal("no Istio resource check for west")
			}
			if got.OK != tc.ok || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, tc.ok, tc.message)
			}
		})
	}
}

// TestIstiodTrustDomainCheck: an istiod whose active mesh config names
// another trust domain than the spec's fails; one that did not answer its
// mesh config (or could not be read at all) is not judged.
func TestIstiodTrustDomainCheck(t *testing.T) {
	view := func(td, errMsg string) IstiodView {
		return IstiodView{Namespace: "istio-system", Pod: "istiod-1", TrustDomain: td, Error: errMsg}
	}
	tests := []struct {
		name    string
		istiods []IstiodView
		want    string
		ok      *bool
		message string
	}{
		{"no istiod", nil, "flotilla.example", nil, ""},
		{"mesh config not read", []IstiodView{view("", "")}, "flotilla.example", nil, ""},
		{"unreadable istiod is istiodCheck's", []IstiodView{view("cluster.local", "forbidden")}, "flotilla.example", nil, ""},
		{"spec's domain", []IstiodView{view("flotilla.example", "")}, "flotilla.example", ptrBool(true), "spiffe://flotilla.example/... (istio-system/istiod-1)"},
		{"default domain", []IstiodView{view("cluster.local", "")}, "cluster.local", ptrBool(true), "spiffe://cluster.local/"},
		{"istiod kept cluster.local", []IstiodView{view("cluster.local", "")}, "flotilla.example", ptrBool(false), "issues spiffe://cluster.local/... identities (its mesh config's trustDomain), not the spec's trust domain flotilla.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := istiodTrustDomainCheck(ClusterStatus{Name: "east", Istiods: tc.istiods}, tc.want)
			if (got == nil) != (tc.ok == nil) {
				t.Fatalf("check = %+v, want ok %v", got, tc.ok)
			}
			if got == nil {
				return
			}
			if got.OK != *tc.ok || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, *tc.ok, tc.message)
			}
			if !got.OK && !strings.Contains(got.Hint, "meshConfig.trustDomain") {
				t.Errorf("hint %q does not name meshConfig.trustDomain", got.Hint)
			}
		})
	}
}
