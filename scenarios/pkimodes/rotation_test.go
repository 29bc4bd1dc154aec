package pkimodes

import (
	"context"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/server"
)

// TestCertManagerRootRotation takes `ca rotate root` through its three
// steps in cert-manager mode, the hub signing: after each, every
// cluster's cacerts trusts exactly the step's roots, its intermediate is
// cert-manager's and is signed by the step's signing root (re-issued only
// at sign-with-new, with the full profile and pathlen:0), and no Secret in
// any cluster holds either root's key.
func TestCertManagerRootRotation(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m, ns := isolatedMesh(t, l)
	h := newHub(t)
	applyMesh(t, ctx, h, m)
	clusters := map[string]*kubeCluster{}
	for _, name := range []string{"east", "west"} {
		kc := connectLab(t, l, name)
		in, _ := projected(t, ctx, kc, ns)
		clusters[name] = &kubeCluster{kc: kc, last: in}
	}
	roots := map[string]*x509.Certificate{} // every root seen, by fingerprint
	steps := []struct {
		phase    string
		reissued bool
	}{
		{server.RotationTrustBoth, false},
		{server.RotationSignNew, true},
		{server.RotationDone, false},
	}
	for _, step := range steps {
		rot, err := h.RotateRoot(ctx, nil)
		if err != nil {
			t.Fatalf("rotate root to %s: %v", step.phase, err)
		}
		if rot.Phase != step.phase {
			t.Fatalf("rotate root: phase %s, want %s", rot.Phase, step.phase)
		}
		if err := rot.Apply.Err(); err != nil {
			t.Fatalf("%s: rolling out: %v", step.phase, err)
		}
		for _, name := range []string{"east", "west"} {
			c := clusters[name]
			in, trusted := projected(t, ctx, c.kc, ns)
			for _, r := range trusted.Roots {
				roots[pki.Fingerprint(r)] = r
			}
			if got := trusted.Fingerprints(); !slices.Equal(got, rot.TrustedRoots) {
				t.Errorf("%s: %s: cacerts trusts %v, want %v", step.phase, name, got, rot.TrustedRoots)
			}
			issued, err := certmanager.ReadIssued(ctx, c.kc, ns)
			if err != nil {
				t.Fatal(err)
			}
			if !in.Equal(issued.Cert) {
				t.Errorf("%s: %s: cacerts' intermediate (serial %s) is not cert-manager's (serial %s)", step.phase, name, in.SerialNumber, issued.Cert.SerialNumber)
			}
			if changed := !in.Equal(c.last); changed != step.reissued {
				t.Errorf("%s: %s: intermediate re-issued: %v, want %v", step.phase, name, changed, step.reissued)
			}
			signer := roots[rot.SigningRoot]
			if signer == nil {
				t.Fatalf("%s: %s: the signing root %s is not in cacerts", step.phase, name, rot.SigningRoot)
			}
			if err := in.CheckSignatureFrom(signer); err != nil {
				t.Errorf("%s: %s: intermediate serial %s is not signed by root %s: %v", step.phase, name, in.SerialNumber, rot.SigningRoot, err)
			}
			if err := pki.CheckIntermediate(in, name, ns); err != nil {
				t.Errorf("%s: %s: %v", step.phase, name, err)
			}
			c.last = in
		}
	}
	if len(roots) != 2 {
		t.Fatalf("%d roots seen during the rotation, want the old and the new", len(roots))
	}
	for fp, r := range roots {
		holders, seen, err := l.SecretsHolding(ctx, r.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(holders) > 0 || seen == 0 {
			t.Errorf("root %s: its key in %v (%d private keys looked at)", fp, holders, seen)
		}
	}
}

type kubeCluster struct {
	kc   *kube.Cluster
	last *x509.Certificate // the intermediate after the previous step
}
