package server

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestRemovalRevokesAndRejoinLab: a cluster that leaves has its
// intermediate revoked in a root-signed CRL that every remaining cacerts
// carries (a second apply writes nothing); ca show lists it; the cluster
// re-joining, at a changed API address, converges in one apply with a new
// intermediate, remote secrets at the new address and no stale secret; an
// address change alone converges in one apply too; an intermediate
// rotation brings its CRL to the other clusters at once; the CRL is signed
// anew before its next-update.
func TestRemovalRevokesAndRejoinLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHub(t)
	both := labMesh(t, l, "ECDSA-P256")
	eastOnly := labMesh(t, l, "ECDSA-P256")
	eastOnly.Spec.Clusters = eastOnly.Spec.Clusters[:1]
	westServer := l.Cluster("west").Server
	moved := labMesh(t, l, "ECDSA-P256")
	moved.Spec.Clusters[1].APIServer = strings.Replace(westServer, "127.0.0.1", "localhost", 1)
	east, _ := l.Cluster("east").Connect()
	west, _ := l.Cluster("west").Connect()
	apply := func(what string, m *spec.Mesh, o ApplyOptions) *ApplyReport {
		t.Helper()
		rep, err := h.Apply(ctx, m, o)
		if err == nil {
			err = rep.Err()
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return rep
	}
	cacerts := func(kc *kube.Cluster) *pki.ClusterCACerts {
		t.Helper()
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", kc.Name, err)
		}
		if err := cc.CACerts.Validate(time.Now()); err != nil {
			t.Errorf("%s: cacerts does not validate (as istiod checks it): %v", kc.Name, err)
		}
		return cc
	}
	intermediate := func(cc *pki.ClusterCACerts) *x509.Certificate {
		t.Helper()
		c, err := parseCertPEM(cc.CACerts.CACert)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	crlCheck := func(what string, want int) {
		t.Helper()
		checks, err := h.Check(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range checks {
			if c.Name == "cacerts carries the current CRL" || c.Name == "remote secrets authenticate" {
				if !c.OK {
					t.Errorf("%s: check %q on %s: %s", what, c.Name, c.Cluster, c.Message)
				}
				if c.Name == "cacerts carries the current CRL" {
					n++
				}
			}
		}
		if n != want {
			t.Errorf("%s: %d CRL checks, want %d", what, n, want)
		}
	}

	apply("apply east and west", both, ApplyOptions{CACertsPolicy: pki.Replace})
	if cc := cacerts(east); len(cc.CACerts.CRL) != 0 {
		t.Error("cacerts carries a CRL before anything was revoked")
	}
	oldWest := intermediate(cacerts(west))

	// West leaves: its intermediate is revoked in east's cacerts.
	rep := apply("apply without west", eastOnly, ApplyOptions{})
	if !hasStep(rep, "west", "remove from mesh", "revoked") {
		t.Errorf("removal step does not say the intermediate was revoked: %+v", rep.Steps)
	}
	cc := cacerts(east)
	crls, err := pki.ParseCRLs(cc.CACerts.CRL)
	if err != nil {
		t.Fatalf("east's %s: %v", pki.CRLFile, err)
	}
	rootCert, _ := parseCertPEM(cc.CACerts.RootCert)
	rootCRL := pki.CRLFrom(crls, rootCert)
	if rootCRL == nil || !pki.Revokes(rootCRL, oldWest.SerialNumber) {
		t.Fatalf("east's %s has no root CRL revoking west's intermediate %s", pki.CRLFile, pki.Describe(oldWest).Serial)
	}
	if rootCRL.Number == nil || !rootCRL.NextUpdate.After(time.Now().Add(pki.DefaultCRLLifetime/2)) {
		t.Errorf("root CRL number %v, next update %v", rootCRL.Number, rootCRL.NextUpdate)
	}
	info, err := h.CAShow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Revoked) != 1 || info.Revoked[0].Cluster != "west" || info.Revoked[0].Serial != pki.Describe(oldWest).Serial || info.CRL == nil {
		t.Errorf("ca show: revoked %+v, CRL %+v; want west %s", info.Revoked, info.CRL, pki.Describe(oldWest).Serial)
	}
	crlCheck("after the removal", 1)

	// Idempotent: nothing written by a second apply.
	rv := cc.ResourceVersion
	if rep := apply("second apply without west", eastOnly, ApplyOptions{}); rep.Changes() != 0 {
		t.Errorf("second apply changed %d step(s): %+v", rep.Changes(), rep.Steps)
	}
	if got := cacerts(east).ResourceVersion; got != rv {
		t.Errorf("second apply rewrote east's cacerts (resourceVersion %s -> %s)", rv, got)
	}

	// West re-joins at another address: one apply converges.
	apply("west re-joins at "+moved.Spec.Clusters[1].APIServer, moved, ApplyOptions{})
	newWest := intermediate(cacerts(west))
	if newWest.SerialNumber.Cmp(oldWest.SerialNumber) == 0 {
		t.Fatal("re-joined west got its revoked intermediate back")
	}
	eastCRL, westCRL := cacerts(east).CACerts.CRL, cacerts(west).CACerts.CRL
	if string(eastCRL) != string(westCRL) {
		t.Error("east and west carry different CRLs")
	}
	crls, err = pki.ParseCRLs(westCRL)
	if err != nil {
		t.Fatal(err)
	}
	if pki.CRLFrom(crls, newWest) == nil {
		t.Error("the CRL lacks one from west's new intermediate (Envoy would refuse west's workloads)")
	}
	if c := pki.CRLFrom(crls, rootCert); c == nil || !pki.Revokes(c, oldWest.SerialNumber) || pki.Revokes(c, newWest.SerialNumber) {
		t.Error("the root CRL does not revoke exactly west's old intermediate")
	}
	assertSecretServer(ctx, t, east, "west", moved.Spec.Clusters[1].APIServer)
	crlCheck("after west re-joined", 2)
	if rep := apply("second apply with west", moved, ApplyOptions{}); rep.Changes() != 0 {
		t.Errorf("second apply after the re-join changed %d step(s): %+v", rep.Changes(), rep.Steps)
	}

	// West's address changes back: one apply, the secret follows.
	apply("west's address back to "+westServer, both, ApplyOptions{})
	assertSecretServer(ctx, t, east, "west", westServer)
	crlCheck("after the address change", 2)

	// East's intermediate rotates: west learns its CRL in the same command.
	if _, err := h.RotateIntermediate(ctx, both, "east"); err != nil {
		t.Fatal(err)
	}
	rotated := intermediate(cacerts(east))
	crls, err = pki.ParseCRLs(cacerts(west).CACerts.CRL)
	if err != nil || pki.CRLFrom(crls, rotated) == nil {
		t.Errorf("after east's rotation, west's %s lacks a CRL from east's new intermediate (%v)", pki.CRLFile, err)
	}

	// Four days on, past half the CRL's life: the CRLs are signed anew.
	h.Now = func() time.Time { return time.Now().Add(4 * 24 * time.Hour) }
	rep = apply("apply four days later", both, ApplyOptions{})
	if !hasStep(rep, "", "CRL", "") {
		t.Errorf("no CRL signed four days on: %+v", rep.Steps)
	}
	crls, _ = pki.ParseCRLs(cacerts(east).CACerts.CRL)
	if c := pki.CRLFrom(crls, rootCert); c == nil || c.Number.Cmp(rootCRL.Number) <= 0 || !c.NextUpdate.After(rootCRL.NextUpdate) {
		t.Errorf("root CRL after four days: %+v, want a higher number and a later next update than %v/%v", c, rootCRL.Number, rootCRL.NextUpdate)
	}
}

// hasStep reports whether rep has a step of cluster named step whose detail
// contains detail.
func hasStep(rep *ApplyReport, cluster, step, detail string) bool {
	for _, s := range rep.Steps {
		if s.Cluster == cluster && s.Step == step && strings.Contains(s.Detail, detail) && s.Error == "" {
			return true
		}
	}
	return false
}

// assertSecretServer: the remote secret of target in kc names server, and
// its token authenticates there.
func assertSecretServer(ctx context.Context, t *testing.T, kc *kube.Cluster, target, server string) {
	t.Helper()
	sec, err := kc.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-"+target, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: remote secret of %s: %v", kc.Name, target, err)
	}
	cfg, err := clientcmd.Load(sec.Data[target])
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clusters[target].Server; got != server {
		t.Errorf("%s: remote secret of %s points at %s, want %s", kc.Name, target, got, server)
	}
	if err := probeKubeconfig(ctx, sec.Data[target]); err != nil {
		t.Errorf("%s: remote secret of %s does not authenticate: %v", kc.Name, target, err)
	}
}
