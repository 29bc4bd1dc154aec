package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
)

// doc joins lines into a YAML document, so that tests can count lines.
func doc(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// header is the first five lines of every test document; spec fields start on line 6.
var header = []string{
	"apiVersion: flotilla.dev/v1alpha1",
	"kind: Mesh",
	"metadata:",
	"  name: mesh1",
	"spec:",
}

func mesh(lines ...string) string { return doc(append(append([]string{}, header...), lines...)...) }

// twoClusters is a valid multi-primary cluster list, starting at line 7.
var twoClusters = []string{
	"  clusters:",
	"  - {name: east, context: east, network: network1}",
	"  - {name: west, context: west, network: network2}",
}

func with(lines []string, more ...string) []string {
	return append(append([]string{}, lines...), more...)
}

func TestParseRejects(t *testing.T) {
	mp := "  topology: multi-primary"
	cases := []struct {
		name string
		in   string
		// want are substrings of the error, in order of appearance.
		want []string
		// problems is the exact number of problems expected (0: do not check).
		problems int
	}{
		{"empty file", "", []string{"mesh.yaml: empty document: expected a Mesh"}, 1},
		{"only comments", "# a mesh, one day\n", []string{"empty document"}, 1},
		{"two documents", mesh(with([]string{mp}, twoClusters...)...) + "---\napiVersion: v1\n",
			[]string{"line 10: a second YAML document: a mesh spec is exactly one document"}, 1},
		{"invalid YAML", "apiVersion: [unclosed\n", []string{"invalid YAML: line"}, 1},
		{"top level is a list", "- a\n- b\n", []string{"line 1: expected a mapping (a Mesh document), got a list"}, 1},
		{"unknown top-level field", doc("apiVersion: flotilla.dev/v1alpha1", "kind: Mesh", "metadata: {name: m}", "specs: {}"),
			[]string{`line 4: specs: unknown field "specs" (did you mean "spec"?)`}, 0},
		{"unknown cluster field with line", mesh(mp, "  clusters:", "  - name: east", "    context: east", "    netwrk: network1"),
			[]string{`line 10: spec.clusters[0].netwrk: unknown field "netwrk" (did you mean "network"?)`}, 0},
		{"unknown field without suggestion", mesh(with([]string{mp, "  colour: blue"}, twoClusters...)...),
			[]string{`line 7: spec.colour: unknown field "colour"`}, 1},
		{"field given twice", mesh(with([]string{mp, "  topology: primary-remote"}, twoClusters...)...),
			[]string{"line 7: spec.topology: field given twice (first on line 6)"}, 1},
		{"integer field given a string", mesh(mp, "  clusters:", "  - name: east", "    context: east", "    network: n1",
			"    gateway: {serviceType: NodePort, nodePort: abc}"),
			[]string{`line 11: spec.clusters[0].gateway.nodePort: expected an integer, got string "abc"`}, 1},
		{"apiServerAccess neither direct nor gateway", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServerAccess: vpn}", "  - {name: west, context: west, network: n2}"),
			[]string{`line 8: spec.clusters[0].apiServerAccess: "vpn" is not one of direct, gateway`}, 1},
		{"apiServerAccess gateway beside apiServer", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - name: west",
			"    context: west", "    network: n2", "    apiServer: https://west.example.com:6443", "    apiServerAccess: gateway"),
			[]string{"line 13: spec.clusters[1].apiServerAccess: gateway: the readers reach the API server through the east-west gateway's address, so apiServer is not used"}, 1},
		{"list field given a mapping", mesh(mp, "  clusters: {name: east}"),
			[]string{"line 7: spec.clusters: expected a list, got a mapping"}, 1},
		{"bool field given a string", mesh(with([]string{mp, `  allowLoopbackAPIServers: "yes"`}, twoClusters...)...),
			[]string{`line 7: spec.allowLoopbackAPIServers: expected true or false, got string "yes"`}, 1},
		{"string field given a number", mesh(mp, "  clusters:", "  - {name: east, context: east, network: 1}"),
			[]string{`line 8: spec.clusters[0].network: expected a string, got integer "1" (quote it to make it a string)`}, 1},
		{"struct field given a string", mesh(with([]string{mp, "  pki: builtin"}, twoClusters...)...),
			[]string{`line 7: spec.pki: expected a mapping, got string "builtin"`}, 1},
		{"wrong apiVersion", doc("apiVersion: v1", "kind: Mesh", "metadata: {name: m}", "spec:", mp, twoClusters[0], twoClusters[1], twoClusters[2]),
			[]string{`line 1: apiVersion: "v1" is not supported (want flotilla.dev/v1alpha1)`}, 1},
		{"wrong kind", doc("apiVersion: flotilla.dev/v1alpha1", "kind: Cluster", "metadata: {name: m}", "spec:", mp, twoClusters[0], twoClusters[1], twoClusters[2]),
			[]string{`line 2: kind: "Cluster" is not supported (want Mesh)`}, 1},
		{"missing apiVersion and kind", doc("metadata: {name: m}", "spec:", mp, twoClusters[0], twoClusters[1], twoClusters[2]),
			[]string{`apiVersion: "" is not supported`, `kind: "" is not supported`}, 2},
		{"missing metadata.name", doc("apiVersion: flotilla.dev/v1alpha1", "kind: Mesh", "spec:", mp, twoClusters[0], twoClusters[1], twoClusters[2]),
			[]string{"metadata.name: required"}, 0},
		{"cluster name not DNS-1123", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: West, context: west, network: n2}"),
			[]string{`line 9: spec.clusters[1].name: "West" is not a DNS-1123 label`}, 1},
		{"mesh name not DNS-1123", doc("apiVersion: flotilla.dev/v1alpha1", "kind: Mesh", "metadata: {name: my_mesh}", "spec:", mp, twoClusters[0], twoClusters[1], twoClusters[2]),
			[]string{`line 3: metadata.name: "my_mesh" is not a DNS-1123 label`, `spec.meshID: "my_mesh" is not a DNS-1123 label`}, 2},
		{"duplicate cluster name", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: east, context: west, network: n2}"),
			[]string{`line 9: spec.clusters[1].name: "east" is already the name of spec.clusters[0]`}, 1},
		{"missing context", mesh(mp, "  clusters:", "  - {name: east, network: n1}"),
			[]string{"spec.clusters[0].context: required (the kubeconfig context that reaches east)"}, 1},
		{"two clusters on one context", mesh(mp, "  clusters:", "  - {name: east, context: lab, network: n1}", "  - {name: west, context: lab, network: n2}"),
			[]string{`line 9: spec.clusters[1].context: context "lab" is already used by spec.clusters[0] (east)`}, 1},
		{"missing network", mesh(mp, "  clusters:", "  - {name: east, context: east}"),
			[]string{"spec.clusters[0].network: required"}, 1},
		{"network not a label", mesh(mp, "  clusters:", "  - {name: east, context: east, network: Net 1}"),
			[]string{`line 8: spec.clusters[0].network: "Net 1" is not a DNS-1123 label`}, 1},
		{"missing topology", mesh(twoClusters...),
			[]string{"spec.topology: required (one of multi-primary, primary-remote, external-control-plane)"}, 1},
		{"unknown topology", mesh(with([]string{"  topology: star"}, twoClusters...)...),
			[]string{`line 6: spec.topology: "star" is not a topology (one of multi-primary, primary-remote, external-control-plane)`}, 1},
		{"role not in topology", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"),
			[]string{"line 9: spec.clusters[1].role: role remote is not part of topology multi-primary (allowed: primary)"}, 1},
		{"primary in external control plane", mesh("  topology: external-control-plane", "  clusters:", "  - {name: cp, context: cp, network: n1, role: control-plane}", "  - {name: dp, context: dp, network: n1}"),
			[]string{"spec.clusters[1].role: role primary is not part of topology external-control-plane (allowed: control-plane, data-plane)"}, 1},
		{"unknown role", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, role: leader}"),
			[]string{`spec.clusters[0].role: "leader" is not a role (topology multi-primary allows primary)`}, 0},
		{"remote without a primary", mesh("  topology: primary-remote", "  clusters:", "  - {name: east, context: east, network: n1, role: remote}"),
			[]string{"line 7: spec.clusters: topology primary-remote needs at least one primary cluster"}, 1},
		{"data plane without a control plane", mesh("  topology: external-control-plane", "  clusters:", "  - {name: dp, context: dp, network: n1, role: data-plane}"),
			[]string{"topology external-control-plane needs at least one control-plane cluster"}, 1},
		{"two primaries and a remote without controlPlane", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2}", "  - {name: edge, context: edge, network: n3, role: remote}"),
			[]string{"spec.clusters[2].controlPlane: cluster edge: 2 primary clusters could serve it ([east west]); name one with controlPlane"}, 1},
		{"controlPlane names no primary", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: edge, context: edge, network: n3, role: remote, controlPlane: nowhere}"),
			[]string{`line 9: spec.clusters[1].controlPlane: cluster edge: controlPlane "nowhere" is not a primary cluster of this mesh`}, 1},
		{"controlPlane on a primary", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: east, network: n1, controlPlane: west}", "  - {name: west, context: west, network: n2}"),
			[]string{"spec.clusters[0].controlPlane: a primary cluster runs its own istiod"}, 1},
		{"no clusters", mesh(mp), []string{"spec.clusters: at least one cluster is required"}, 1},
		{"bad PKI mode", mesh(with([]string{mp, "  pki: {mode: vault}"}, twoClusters...)...),
			[]string{`line 7: spec.pki.mode: "vault" is not a PKI mode (one of builtin, cert-manager)`}, 1},
		{"bad key algorithm", mesh(with([]string{mp, "  pki: {keyAlgorithm: RSA-1024}"}, twoClusters...)...),
			[]string{`line 7: spec.pki.keyAlgorithm: "RSA-1024" is not a key algorithm (one of RSA-4096, RSA-2048, ECDSA-P256)`}, 1},
		{"garbage duration", mesh(with([]string{mp, "  pki: {rootTTL: 10y}"}, twoClusters...)...),
			[]string{`line 7: spec.pki.rootTTL: "10y" is not a duration (use Go durations such as "8760h" or "90m")`}, 1},
		{"zero duration", mesh(with([]string{mp, "  pki: {intermediateTTL: 0s}"}, twoClusters...)...),
			[]string{`spec.pki.intermediateTTL: "0s": must be positive`}, 1},
		{"negative duration", mesh(with([]string{mp, "  federation: {tokenTTL: -1h}"}, twoClusters...)...),
			[]string{`line 7: spec.federation.tokenTTL: "-1h": must be positive`}, 1},
		{"duration given a number", mesh(with([]string{mp, "  pki: {rootTTL: 10}"}, twoClusters...)...),
			[]string{`spec.pki.rootTTL: expected a duration such as "8760h", got integer "10"`}, 1},
		{"intermediate outlives root", mesh(with([]string{mp, "  pki: {rootTTL: 8760h, intermediateTTL: 17520h}"}, twoClusters...)...),
			[]string{"spec.pki.intermediateTTL: 17520h0m0s outlives the root (rootTTL 8760h0m0s)"}, 1},
		{"token TTL below the Kubernetes minimum", mesh(with([]string{mp, "  federation: {tokenTTL: 1m}"}, twoClusters...)...),
			[]string{"spec.federation.tokenTTL: 1m0s is shorter than the 10m0s Kubernetes issues a token for"}, 1},
		{"apiServer not https", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'http://10.0.0.1:6443'}"),
			[]string{`line 8: spec.clusters[0].apiServer: "http://10.0.0.1:6443": must be an https:// URL`}, 1},
		{"apiServer not a URL", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://exa mple.com'}"),
			[]string{`spec.clusters[0].apiServer: "https://exa mple.com" is not a URL`}, 1},
		{"apiServer without host", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://:6443'}"),
			[]string{`spec.clusters[0].apiServer: "https://:6443" has no host`}, 1},
		{"apiServer with credentials", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://admin:pw@api.example.com'}"),
			[]string{"credentials do not belong in the URL"}, 1},
		{"apiServer bad port", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://api.example.com:99999'}"),
			[]string{"port 99999 is not a port number"}, 1},
		{"loopback apiServer", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://127.0.0.1:6443'}"),
			[]string{`line 8: spec.clusters[0].apiServer: "https://127.0.0.1:6443" is a loopback address that other clusters cannot reach`}, 1},
		{"localhost apiServer", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://localhost:6443'}"),
			[]string{"is a loopback address"}, 1},
		{"IPv6 loopback apiServer", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://[::1]:6443'}"),
			[]string{"is a loopback address"}, 1},
		{"certManager issuer kind", mesh(with([]string{mp, "  pki: {mode: cert-manager, certManager: {issuerRef: {name: ca, kind: Vault}}}"}, twoClusters...)...),
			[]string{`spec.pki.certManager.issuerRef.kind: "Vault" is not an issuer kind (Issuer or ClusterIssuer)`}, 1},
		{"certManager issuer without name", mesh(with([]string{mp, "  pki: {mode: cert-manager, certManager: {issuerRef: {kind: ClusterIssuer}}}"}, twoClusters...)...),
			[]string{"spec.pki.certManager.issuerRef.name: required"}, 1},
		{"csr-agent with an external control plane", mesh("  topology: external-control-plane",
			"  pki: {mode: cert-manager, certManager: {csrAgent: {image: flotilla:1}}}", "  clusters:",
			"  - {name: cp, context: cp, network: n1, role: control-plane}", "  - {name: dp, context: dp, network: n1, role: data-plane}"),
			[]string{"spec.pki.certManager.csrAgent: not supported with topology external-control-plane"}, 1},
		{"certManager section in builtin mode", mesh(with([]string{mp, "  pki: {certManager: {issuerRef: {name: ca}}}"}, twoClusters...)...),
			[]string{"spec.pki.certManager: only used with mode cert-manager"}, 1},
		{"certManager on hub root with offline root", mesh(with([]string{mp, "  pki: {mode: cert-manager, offline: true, root: {certFile: root.pem}}"}, twoClusters...)...),
			[]string{"spec.pki.offline: cert-manager mode without certManager.issuerRef signs with the hub's root"}, 1},
		{"offline root with a key", mesh(with([]string{mp, "  pki: {offline: true, root: {certFile: root.pem, keyFile: root-key.pem}}"}, twoClusters...)...),
			[]string{"spec.pki.root.keyFile: an offline root's key never reaches flotilla"}, 1},
		{"imported root without key", mesh(with([]string{mp, "  pki: {root: {certFile: root.pem}}"}, twoClusters...)...),
			[]string{"spec.pki.root.keyFile: required to sign intermediates with an imported root"}, 1},
		{"root without cert", mesh(with([]string{mp, "  pki: {root: {keyFile: root-key.pem}}"}, twoClusters...)...),
			[]string{"spec.pki.root.certFile: required when a root is given"}, 1},
		{"unknown gateway service type", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, gateway: {serviceType: Ingress}}"),
			[]string{`spec.clusters[0].gateway.serviceType: "Ingress" is not a Service type (one of LoadBalancer, NodePort, ClusterIP)`}, 1},
		{"nodePort without NodePort", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, gateway: {nodePort: 31443}}"),
			[]string{"spec.clusters[0].gateway.nodePort: only used with serviceType NodePort"}, 1},
		{"ClusterIP gateway without address", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, gateway: {serviceType: ClusterIP}}"),
			[]string{"spec.clusters[0].gateway.address: required with serviceType ClusterIP"}, 1},
		{"gateway address garbage", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, gateway: {address: 'not an address'}}"),
			[]string{`spec.clusters[0].gateway.address: "not an address" is neither an IP address nor a DNS name`}, 1},
		{"trust domain not DNS", mesh(with([]string{mp, "  trustDomain: Cluster Local"}, twoClusters...)...),
			[]string{`line 7: spec.trustDomain: "Cluster Local" is not a DNS-1123 subdomain`}, 1},
		{"istio version", mesh(with([]string{mp, "  istio: {version: latest}"}, twoClusters...)...),
			[]string{`spec.istio.version: "latest" is not an Istio version`}, 1},
		{"istio version as a number", mesh(with([]string{mp, "  istio: {version: 1.20}"}, twoClusters...)...),
			[]string{`spec.istio.version: expected a string, got number "1.20" (quote it to make it a string)`}, 1},
		{"every problem at once, in document order", mesh("  topology: star", "  pki: {mode: vault, rootTTL: soon}", "  clusters:",
			"  - {name: East, context: east, network: n1, extra: 1}", "  - {name: west, context: east, network: n2, apiServer: 'ftp://x'}"),
			[]string{
				`line 6: spec.topology: "star" is not a topology`,
				`line 7: spec.pki.rootTTL: "soon" is not a duration`,
				`line 7: spec.pki.mode: "vault" is not a PKI mode`,
				`line 9: spec.clusters[0].extra: unknown field "extra"`,
				`line 9: spec.clusters[0].name: "East" is not a DNS-1123 label`,
				`line 10: spec.clusters[1].context: context "east" is already used by spec.clusters[0] (East)`,
				`line 10: spec.clusters[1].apiServer: "ftp://x": must be an https:// URL`,
			}, 7},
		{"a field that failed to decode is not also reported missing", mesh(mp, "  clusters:", "  - {name: east, context: east, network: [n1]}"),
			[]string{"spec.clusters[0].network: expected a string, got a list"}, 1},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d broken specs", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("mesh.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if m != nil {
				t.Errorf("returned a mesh with the error")
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error is %T, want *spec.Error: %v", err, err)
			}
			if se.Source != "mesh.yaml" {
				t.Errorf("source %q, want mesh.yaml", se.Source)
			}
			msg := err.Error()
			at := 0
			for _, w := range tc.want {
				i := strings.Index(msg[at:], w)
				if i < 0 {
					t.Fatalf("error does not contain %q (after offset %d):\n%s", w, at, msg)
				}
				at += i + len(w)
			}
			if tc.problems > 0 && len(se.Problems) != tc.problems {
				t.Errorf("%d problems, want %d:\n%s", len(se.Problems), tc.problems, msg)
			}
		})
	}
}

func TestParseAcceptsEveryTopology(t *testing.T) {
	cases := []struct {
		name     string
		in       string
		members  []federation.Member
		servedBy map[string]string
	}{
		{"multi-primary multi-network", mesh(with([]string{"  topology: multi-primary"}, twoClusters...)...),
			[]federation.Member{{Name: "east", Role: federation.RolePrimary, Network: "network1"}, {Name: "west", Role: federation.RolePrimary, Network: "network2"}},
			map[string]string{"east": "east", "west": "west"}},
		{"multi-primary one network", mesh("  topology: multi-primary", "  clusters:", "  - {name: east, context: east, network: net}", "  - {name: west, context: west, network: net}"),
			[]federation.Member{{Name: "east", Role: federation.RolePrimary, Network: "net"}, {Name: "west", Role: federation.RolePrimary, Network: "net"}},
			map[string]string{"west": "west"}},
		{"primary-remote, the only primary chosen", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"),
			[]federation.Member{{Name: "east", Role: federation.RolePrimary, Network: "n1"}, {Name: "west", Role: federation.RoleRemote, Network: "n2"}},
			map[string]string{"east": "east", "west": "east"}},
		{"primary-remote, two primaries, named", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2}",
			"  - {name: edge, context: edge, network: n2, role: remote, controlPlane: west}"),
			[]federation.Member{{Name: "east", Role: federation.RolePrimary, Network: "n1"}, {Name: "west", Role: federation.RolePrimary, Network: "n2"},
				{Name: "edge", Role: federation.RoleRemote, Network: "n2", ControlPlane: "west"}},
			map[string]string{"edge": "west"}},
		{"external control plane", mesh("  topology: external-control-plane", "  clusters:",
			"  - {name: cp, context: cp, network: n1, role: control-plane}", "  - {name: dp, context: dp, network: n1, role: data-plane}"),
			[]federation.Member{{Name: "cp", Role: federation.RoleControlPlane, Network: "n1"}, {Name: "dp", Role: federation.RoleDataPlane, Network: "n1"}},
			map[string]string{"dp": "cp", "cp": "cp"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("mesh.yaml", []byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			got := m.Members()
			if len(got) != len(tc.members) {
				t.Fatalf("members %+v, want %+v", got, tc.members)
			}
			for i := range got {
				want := tc.members[i]
				// A cluster that names no dataplane mode has the mesh's default.
				if want.DataplaneMode == "" {
					want.DataplaneMode = deploy.DataplaneSidecar
				}
				if got[i] != want {
					t.Errorf("member %d: %+v, want %+v", i, got[i], want)
				}
			}
			// Who serves whom is the compiled layout's (deploy.Compile).
			l, err := deploy.Compile(m.Spec.Topology, got, deploy.Namespaces{})
			if err != nil {
				t.Fatal(err)
			}
			for c, want := range tc.servedBy {
				if p, ok := l.Cluster(c); !ok || p.ServedBy != want {
					t.Errorf("ServedBy(%s) = %q, %v; want %q", c, p.ServedBy, ok, want)
				}
			}
		})
	}
}

func TestParseAppliesDefaults(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(mesh(with([]string{"  topology: multi-primary"}, twoClusters...)...)))
	if err != nil {
		t.Fatal(err)
	}
	s := m.Spec
	checks := []struct {
		field     string
		got, want any
	}{
		{"meshID", s.MeshID, "mesh1"},
		{"trustDomain", s.TrustDomain, "cluster.local"},
		{"controlPlaneNamespace", s.ControlPlaneNamespace, "istio-system"},
		{"pki.mode", s.PKI.Mode, PKIBuiltin},
		{"pki.keyAlgorithm", s.PKI.KeyAlgorithm, RSA4096},
		{"pki.rootTTL", s.PKI.RootTTL.Duration, 87600 * time.Hour},
		{"pki.intermediateTTL", s.PKI.IntermediateTTL.Duration, 17520 * time.Hour},
		{"federation.tokenTTL", s.Federation.TokenTTL.Duration, 168 * time.Hour},
		{"clusters[0].role", s.Clusters[0].Role, federation.RolePrimary},
		{"clusters[1].gateway.serviceType", s.Clusters[1].Gateway.ServiceType, LoadBalancer},
		{"allowLoopbackAPIServers", s.AllowLoopbackAPIServers, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
	if m.Line("spec.clusters[1].name") != 9 {
		t.Errorf("line of spec.clusters[1].name = %d, want 9", m.Line("spec.clusters[1].name"))
	}
}

func TestParseAcceptsFullSpec(t *testing.T) {
	in := mesh(
		"  meshID: prod",
		"  trustDomain: example.org",
		"  topology: primary-remote",
		"  controlPlaneNamespace: mesh-system",
		"  istio: {version: 1.27.1}",
		"  pki:",
		"    mode: cert-manager",
		"    keyAlgorithm: ECDSA-P256",
		"    rootTTL: 43800h",
		"    intermediateTTL: 4380h",
		"    certManager:",
		"      issuerRef: {name: mesh-ca, kind: ClusterIssuer}",
		"  federation: {tokenTTL: 720h, legacyTokenSecret: true}",
		"  allowLoopbackAPIServers: true",
		"  clusters:",
		"  - &east {name: east, context: kind-east, kubeconfig: /tmp/east.kubeconfig, network: n1, apiServer: 'https://127.0.0.1:6443',",
		"           gateway: {serviceType: NodePort, nodePort: 31443, address: 172.18.0.2}}",
		"  - name: west",
		"    context: kind-west",
		"    network: n2",
		"    role: remote",
		"    gateway: ~",
		"    apiServer: https://west.example.com:6443/k8s",
	)
	m, err := Parse("mesh.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	ref := m.Spec.PKI.CertManager.IssuerRef
	if ref.Kind != "ClusterIssuer" || ref.Group != "cert-manager.io" || ref.Name != "mesh-ca" {
		t.Errorf("issuerRef %+v", ref)
	}
	e, _ := m.Cluster("east")
	if e.Gateway.NodePort != 31443 || e.Gateway.Address != "172.18.0.2" || e.Kubeconfig != "/tmp/east.kubeconfig" {
		t.Errorf("east %+v", e)
	}
	if w, _ := m.Cluster("west"); w.Gateway.ServiceType != LoadBalancer || w.Role != federation.RoleRemote {
		t.Errorf("west %+v", w)
	}
	if !m.Spec.Federation.LegacyTokenSecret || m.Spec.Federation.TokenTTL.Duration != 720*time.Hour {
		t.Errorf("federation %+v", m.Spec.Federation)
	}
}

func TestHash(t *testing.T) {
	base := mesh(with([]string{"  topology: multi-primary"}, twoClusters...)...)
	h0 := mustParse(t, base).Hash()
	same := []struct{ name, in string }{
		{"defaults written out", mesh("  topology: multi-primary", "  meshID: mesh1", "  trustDomain: cluster.local",
			"  pki: {mode: builtin, keyAlgorithm: RSA-4096, rootTTL: 87600h0m0s, intermediateTTL: 17520h}", "  federation: {tokenTTL: 168h}",
			"  clusters:", "  - {name: east, context: east, network: network1, role: primary}", "  - {name: west, context: west, network: network2, gateway: {serviceType: LoadBalancer}}")},
		{"clusters reordered", mesh("  topology: multi-primary", "  clusters:", twoClusters[2], twoClusters[1])},
		{"comments and flow style", "# prod\n" + doc("{apiVersion: flotilla.dev/v1alpha1, kind: Mesh, metadata: {name: mesh1}, spec: {topology: multi-primary, clusters: [",
			"{name: east, context: east, network: network1}, {name: west, context: west, network: network2}]}}")},
	}
	for _, tc := range same {
		if h := mustParse(t, tc.in).Hash(); h != h0 {
			t.Errorf("%s: hash %s, want %s", tc.name, h, h0)
		}
	}
	different := []struct{ name, in string }{
		{"network changed", mesh("  topology: multi-primary", "  clusters:", twoClusters[1], "  - {name: west, context: west, network: network3}")},
		{"key algorithm changed", mesh(with([]string{"  topology: multi-primary", "  pki: {keyAlgorithm: ECDSA-P256}"}, twoClusters...)...)},
		{"token TTL changed", mesh(with([]string{"  topology: multi-primary", "  federation: {tokenTTL: 8761h}"}, twoClusters...)...)},
	}
	for _, tc := range different {
		if h := mustParse(t, tc.in).Hash(); h == h0 {
			t.Errorf("%s: hash unchanged", tc.name)
		}
	}
	if !strings.HasPrefix(h0, "sha256:") || len(h0) != len("sha256:")+64 {
		t.Errorf("hash %q is not sha256:<hex>", h0)
	}
	// Canonical must not reorder the caller's clusters.
	m := mustParse(t, mesh("  topology: multi-primary", "  clusters:", twoClusters[2], twoClusters[1]))
	m.Hash()
	if m.Spec.Clusters[0].Name != "west" {
		t.Errorf("Hash reordered the spec's clusters")
	}
}

func TestValidateProgrammaticSpec(t *testing.T) {
	m := &Mesh{APIVersion: APIVersion, Kind: Kind, Metadata: Metadata{Name: "m"}, Spec: MeshSpec{
		Topology: federation.MultiPrimary,
		Clusters: []Cluster{{Name: "a", Context: "a", Network: "n"}},
	}}
	m.Default()
	if err := m.Validate(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	m.Spec.PKI.RootTTL.Duration = -time.Hour
	err := m.Validate()
	if err == nil || !strings.Contains(err.Error(), "spec.pki.rootTTL: -1h0m0s: must be positive") {
		t.Fatalf("negative rootTTL: %v", err)
	}
}

func mustParse(t *testing.T, in string) *Mesh {
	t.Helper()
	m, err := Parse("mesh.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestParseAPIServerAccess: apiServerAccess reaches the topology's members
// as given; omitted it stays empty (direct), so that a spec written before
// the field hashes as it did.
func TestParseAPIServerAccess(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(mesh("  topology: multi-primary", "  clusters:",
		"  - {name: east, context: east, network: n1}",
		"  - {name: west, context: west, network: n2, apiServerAccess: gateway}",
		"  - {name: south, context: south, network: n3, apiServerAccess: direct}")))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]deploy.APIServerAccess{}
	for _, mem := range m.Members() {
		got[mem.Name] = mem.APIServerAccess
	}
	want := map[string]deploy.APIServerAccess{"east": "", "west": deploy.APIServerViaGateway, "south": deploy.APIServerDirect}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("members' access = %v, want %v", got, want)
	}
	if c, _ := json.Marshal(m.Spec.Clusters[0]); strings.Contains(string(c), "apiServerAccess") {
		t.Errorf("east without apiServerAccess marshals it: %s", c)
	}
}
