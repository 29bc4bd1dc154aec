package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
)

// TestRotateRootLab: the three steps of a root rotation, each rolled out by
// an apply, keep every pair of workloads trusting each other until the last
// step, which drops the old root: a workload certificate from before the
// rotation verifies in every cluster after trust-both and sign-with-new,
// and no longer after done. Every step leaves check passing.
func TestRotateRootLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "rr")
	if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("apply: %v %v", err, rep.Err())
	}
	clusters := []string{"east", "west"}
	cacerts := func(t *testing.T, name string) pki.CACerts {
		t.Helper()
		kc, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.ReadCACerts(ctx, kc, ns)
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		return cc.CACerts
	}
	// workload signs a certificate for a workload of cluster name, as its
	// istiod would with the cacerts it holds now.
	workload := func(t *testing.T, name string) []byte {
		t.Helper()
		is, err := pki.NewIssuer(cacerts(t, name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := pki.SPIFFEID{TrustDomain: "cluster.local", Namespace: "sample", ServiceAccount: name}
		wc, err := is.SignWorkload(pki.WorkloadRequest{ID: id, PublicKey: key.Public()}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return wc.ChainPEM()
	}
	// trusts reports whether every cluster's root-cert.pem verifies chain.
	trustedEverywhere := func(t *testing.T, chain []byte) error {
		t.Helper()
		for _, c := range clusters {
			roots, err := cacerts(t, c).Roots()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := roots.VerifyChain(chain, time.Now(), ""); err != nil {
				return fmt.Errorf("%s: %w", c, err)
			}
		}
		return nil
	}
	checksPass := func(t *testing.T) {
		t.Helper()
		checks, err := h.Check(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range checks {
			if !c.OK {
				t.Errorf("check %q [%s] failed: %s", c.Name, c.Cluster, c.Message)
			}
		}
	}

	before := map[string][]byte{}
	serials := map[string]string{}
	for _, c := range clusters {
		before[c] = workload(t, c)
		serials[c] = string(cacerts(t, c).CACert)
	}
	var oldRoot, newRoot string
	steps := []struct {
		phase string
		check func(t *testing.T, r *RootRotation)
	}{
		{RotationTrustBoth, func(t *testing.T, r *RootRotation) {
			oldRoot, newRoot = r.TrustedRoots[0], r.TrustedRoots[1]
			if len(r.TrustedRoots) != 2 || r.SigningRoot != oldRoot {
				t.Fatalf("trusted %v, signing %s: want the old root signing and two roots trusted", r.TrustedRoots, r.SigningRoot)
			}
			for _, c := range clusters {
				if string(cacerts(t, c).CACert) != serials[c] {
					t.Errorf("%s: the intermediate changed while only trust should have", c)
				}
			}
		}},
		{RotationSignNew, func(t *testing.T, r *RootRotation) {
			if r.SigningRoot != newRoot || strings.Join(r.TrustedRoots, ",") != newRoot+","+oldRoot {
				t.Fatalf("trusted %v, signing %s: want the new root signing, both trusted", r.TrustedRoots, r.SigningRoot)
			}
			for _, c := range clusters {
				info, err := cacerts(t, c).Describe()
				if err != nil {
					t.Fatal(err)
				}
				if string(cacerts(t, c).CACert) == serials[c] || info.Roots[0].Fingerprint != newRoot {
					t.Errorf("%s: intermediate not re-issued under the new root (roots %v)", c, info.Roots)
				}
			}
			// A new workload certificate and an old one verify each other.
			for _, c := range clusters {
				if err := trustedEverywhere(t, workload(t, c)); err != nil {
					t.Errorf("a certificate of %s's new intermediate: %v", c, err)
				}
			}
		}},
		{RotationDone, func(t *testing.T, r *RootRotation) {
			if r.SigningRoot != newRoot || len(r.TrustedRoots) != 1 || r.TrustedRoots[0] != newRoot {
				t.Fatalf("trusted %v, signing %s: want the new root alone", r.TrustedRoots, r.SigningRoot)
			}
		}},
	}
	for _, st := range steps {
		t.Run(st.phase, func(t *testing.T) {
			r, err := h.RotateRoot(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.Phase != st.phase {
				t.Fatalf("phase %s, want %s", r.Phase, st.phase)
			}
			if err := r.Apply.Err(); err != nil {
				t.Fatalf("roll-out: %v", err)
			}
			st.check(t, r)
			info, err := h.CAShow(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want, roots := st.phase, 2
			if st.phase == RotationDone {
				want, roots = "", 1 // none under way
			}
			if info.RootRotation != want || len(info.Roots) != roots {
				t.Errorf("ca show: rotation %q with %d roots, want %q with %d", info.RootRotation, len(info.Roots), want, roots)
			}
			for _, c := range clusters {
				err := trustedEverywhere(t, before[c])
				if st.phase == RotationDone && err == nil {
					t.Errorf("a certificate of %s's first intermediate still verifies after the old root was dropped", c)
				}
				if st.phase != RotationDone && err != nil {
					t.Errorf("a certificate of %s's first intermediate: %v", c, err)
				}
			}
			checksPass(t)
		})
	}
}
