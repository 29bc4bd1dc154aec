package pkimodes

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestCertManagerRemovalWritesCRL: in cert-manager mode (the hub signs as
// MeshIssuer, so it holds the root's key), west leaving revokes west's
// intermediate in a root-signed CRL that flotilla writes into east's
// cacerts as ca-crl.pem, with a CRL from east's own intermediate (signed
// while the hub projects it; istiod refuses a ca-crl.pem without one from
// every CA of cert-chain.pem) and west's last one; check passes, a second
// apply changes nothing. West re-joins with a new intermediate, whose CRL
// east's cacerts then carries; a rotation of east's intermediate puts the
// new one's CRL into both clusters' cacerts.
func TestCertManagerRemovalWritesCRL(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	m, ns := isolatedMesh(t, l)
	h := newHub(t)
	applyMesh(t, ctx, h, m)
	east, west := connectLab(t, l, "east"), connectLab(t, l, "west")
	issued := func(kc *kube.Cluster) *x509.Certificate {
		t.Helper()
		in, err := certmanager.ReadIssued(ctx, kc, ns)
		if err != nil {
			t.Fatal(err)
		}
		return in.Cert
	}
	westInter := issued(west)
	// crls reads a cluster's cacerts: valid as istiod checks it, and its CRLs.
	crls := func(kc *kube.Cluster) (*pki.CACerts, []*x509.RevocationList) {
		t.Helper()
		cc, err := pki.ReadCACerts(ctx, kc, ns)
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", kc.Name, err)
		}
		if len(cc.CACerts.CRL) == 0 {
			t.Fatalf("%s: secret %s/cacerts has no %s", kc.Name, ns, pki.CRLFile)
		}
		if err := cc.CACerts.Validate(time.Now()); err != nil {
			t.Fatalf("%s: secret %s/cacerts: %v", kc.Name, ns, err)
		}
		out, err := pki.ParseCRLs(cc.CACerts.CRL)
		if err != nil {
			t.Fatal(err)
		}
		return &cc.CACerts, out
	}

	eastOnly := *m
	eastOnly.Spec.Clusters = m.Spec.Clusters[:1]
	applyMesh(t, ctx, h, &eastOnly)
	cc, list := crls(east)
	root, err := x509.ParseCertificate(pemBlock(t, cc.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	if c := pki.CRLFrom(list, root); c == nil || !pki.Revokes(c, westInter.SerialNumber) {
		t.Fatalf("east's cacerts: the root's CRL does not revoke west's intermediate %s", pki.Describe(westInter).Serial)
	}
	eastInter := issued(east)
	if pki.CRLFrom(list, eastInter) == nil {
		t.Error("east's cacerts: no CRL from east's own intermediate")
	}
	if pki.CRLFrom(list, westInter) == nil {
		t.Error("east's cacerts: no last CRL from west's revoked intermediate")
	}
	t.Logf("east's %s: %d CRLs (root, east's intermediate, west's last)", pki.CRLFile, len(list))
	checks, err := h.Check(ctx, &eastOnly)
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, c := range checks {
		if c.Name == "cacerts carries the current CRL" {
			seen = true
			if !c.OK {
				t.Errorf("check %s [%s]: %s (hint %s)", c.Name, c.Cluster, c.Message, c.Hint)
			}
		}
	}
	if !seen {
		t.Error("check has no CRL check once the mesh revoked west")
	}
	rep, err := h.Apply(ctx, &eastOnly, server.ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("second apply: %v %v", err, rep.Err())
	}
	if n := rep.Changes(); n != 0 {
		t.Errorf("a second apply changed %d thing(s): %+v", n, rep.Steps)
	}

	applyMesh(t, ctx, h, m)
	rejoined := issued(west)
	if rejoined.SerialNumber.Cmp(westInter.SerialNumber) == 0 {
		t.Fatal("re-joined west has its revoked intermediate")
	}
	if _, list = crls(east); pki.CRLFrom(list, rejoined) == nil {
		t.Error("east's cacerts after west re-joined: no CRL from west's new intermediate")
	}

	// A rotation of east's intermediate: west's cacerts carries the new
	// one's CRL (written before east's), and east's does.
	if _, err := h.RotateIntermediate(ctx, m, "east"); err != nil {
		t.Fatalf("rotate east's intermediate: %v", err)
	}
	rotated := issued(east)
	if rotated.Equal(eastInter) {
		t.Fatal("east's intermediate was not re-issued")
	}
	for _, kc := range []*kube.Cluster{east, west} {
		if _, list = crls(kc); pki.CRLFrom(list, rotated) == nil {
			t.Errorf("%s's cacerts after the rotation: no CRL from east's new intermediate", kc.Name)
		}
	}
	info, err := h.CAShow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Revoked, func(r server.RevokedInfo) bool { return r.Cluster == "west" }) || info.CRL == nil || info.CRL.Unenforced != "" {
		t.Errorf("ca show: revoked %+v, CRL %+v", info.Revoked, info.CRL)
	}
}

// pemBlock is the DER of the first PEM block of b.
func pemBlock(t *testing.T, b []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	return blk.Bytes
}

// TestHubFollowsRenewalWithCRL: once the mesh revoked an intermediate
// (centre left), a renewal cert-manager makes on its own between
// reconciles (forced here, with the hub server's reconcile an hour away)
// is followed by the hub's watch with the CRL: north's cacerts carries its
// new intermediate with that intermediate's CRL (istiod would refuse it
// without), and south's cacerts carries that CRL no later than north's
// cacerts changes (south's Envoys would refuse north's new workloads
// without it).
func TestHubFollowsRenewalWithCRL(t *testing.T) {
	l := trioLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	doc := func(names ...string) *spec.Mesh {
		src := `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh-cm-trio}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256}
  clusters:
`
		for i, n := range names {
			src += fmt.Sprintf("  - {name: %s, context: %s, network: network%d, kubeconfig: %s}\n", n, n, i+1, l.Kubeconfig)
		}
		m, err := spec.Parse("mesh.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	h := newHub(t)
	applyMesh(t, ctx, h, doc("north", "south", "centre"))
	applyMesh(t, ctx, h, doc("north", "south"))
	north, south := connectLab(t, l, "north"), connectLab(t, l, "south")

	logs := &signalHandler{t: t, seen: make(chan string, 1)}
	srv, err := server.NewServer(ctx, h, server.ServerOptions{
		Listen: "127.0.0.1:0", Token: strings.Repeat("t", 32), Interval: time.Hour,
		Logger: slog.New(logs), GracePeriod: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	select {
	case msg := <-logs.seen:
		if msg != "reconciled" {
			t.Fatalf("the hub's first reconcile: %s", msg)
		}
	case <-ctx.Done():
		t.Fatal("the hub never reconciled")
	}

	before, err := certmanager.ReadIssued(ctx, north, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	// cacertsOf reads a cluster's cacerts: its intermediate and CRLs,
	// valid as istiod checks it.
	cacertsOf := func(kc *kube.Cluster) (*x509.Certificate, []*x509.RevocationList) {
		t.Helper()
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", kc.Name, err)
		}
		if err := cc.CACerts.Validate(time.Now()); err != nil {
			t.Fatalf("%s: cacerts: %v", kc.Name, err)
		}
		in, err := x509.ParseCertificate(pemBlock(t, cc.CACerts.CACert))
		if err != nil {
			t.Fatal(err)
		}
		crls, err := pki.ParseCRLs(cc.CACerts.CRL)
		if err != nil {
			t.Fatalf("%s: cacerts %s: %v", kc.Name, pki.CRLFile, err)
		}
		return in, crls
	}
	asked := time.Now()
	if err := certmanager.Renew(ctx, north, "istio-system"); err != nil {
		t.Fatal(err)
	}
	for {
		// North first: whatever north's cacerts shows, south's (read
		// after) shows too if it was written first.
		got, crls := cacertsOf(north)
		if !got.Equal(before.Cert) {
			if pki.CRLFrom(crls, got) == nil {
				t.Error("north's cacerts holds the renewed intermediate without its CRL")
			}
			t.Logf("north: cacerts followed the renewal in %s", time.Since(asked).Round(time.Millisecond))
			if _, southCRLs := cacertsOf(south); pki.CRLFrom(southCRLs, got) == nil {
				t.Error("north's cacerts changed before south's carried the renewed intermediate's CRL")
			}
			return
		}
		if time.Since(asked) > followDeadline {
			t.Fatalf("north: cacerts still holds serial %s %s after the forced renewal", before.Cert.SerialNumber, followDeadline)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
