package realistio

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
)

// trioLab is three clusters with real Istio, for a cluster that leaves
// while two stay and keep reading each other.
var trioLab = lab.NewSharedWith(lab.Options{Clusters: []string{"red", "green", "blue"}, RealIstio: true})

// TestRemovalRetiresHeldTokensRealIstio: blue leaves a mesh of three. The
// reader tokens of red and green that blue held (in its remote secrets)
// are replaced in the removal's apply: red's and green's real istiods
// switch to the new secrets, the old tokens are revoked after the grace
// and refused by TokenReview, and throughout each istiod's clusterz shows
// the other cluster synced or syncing (make-before-break), never missing,
// timed out or closed, and synced at the end.
func TestRemovalRetiresHeldTokensRealIstio(t *testing.T) {
	l := trioLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	doc := `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh3}
spec:
  meshID: mesh3
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
`
	for i, n := range []string{"red", "green", "blue"} {
		doc += fmt.Sprintf("  - {name: %s, context: %s, network: network%d, kubeconfig: %s}\n", n, n, i+1, l.Kubeconfig)
	}
	h, m := applyDoc(t, ctx, l, doc)
	h.SupersededGrace = 5 * time.Second
	conns := map[string]*kube.Cluster{}
	istiods := map[string]lab.IstiodInfo{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		conns[c.Name] = kc
		waitReconciled(t, ctx, kc, c, "default")
		istiods[c.Name] = waitIstiodReady(t, ctx, c)
	}
	other := map[string]string{"red": "green", "green": "red"}
	for _, r := range []string{"red", "green", "blue"} {
		for _, target := range []string{"red", "green", "blue"} {
			if target == r {
				continue
			}
			if st := clusterzStatus(t, ctx, istiods[r], target, func(s string) bool { return s == "synced" }); st != "synced" {
				t.Fatalf("%s's istiod: %s is %q before the removal", r, target, st)
			}
		}
	}
	acct := federation.Account{Namespace: "istio-system", Name: federation.ReaderServiceAccount}
	held := map[string]string{}
	for target := range other {
		held[target] = remoteSecretToken(t, ctx, l.Cluster("blue"), target)
		if ok, err := federation.Accepted(ctx, conns[target], acct, held[target]); err != nil || !ok {
			t.Fatalf("%s: the token blue holds is refused before the removal (%v)", target, err)
		}
	}

	pctx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	stats := map[string]*clusterzStats{}
	polled := make(chan struct{}, len(other))
	for r, target := range other {
		vs := &clusterzStats{seen: map[string]int{}}
		stats[r] = vs
		go func() { defer func() { polled <- struct{}{} }(); vs.poll(pctx, conns[r], istiods[r], target) }()
	}

	pair := *m
	pair.Spec.Clusters = m.Spec.Clusters[:2]
	start := time.Now()
	rep, err := h.Apply(ctx, &pair, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		t.Fatalf("apply without blue: %v", err)
	}
	retired := false
	for _, s := range rep.Steps {
		if s.Cluster == "blue" && s.Step == "tokens it held" {
			retired = strings.Contains(s.Detail, "green, red")
			t.Logf("blue: %s: %s (%s)", s.Step, s.Action, s.Detail)
		}
	}
	if !retired {
		t.Errorf("the removal did not retire the tokens blue held for green and red: %+v", rep.Steps)
	}
	for r, target := range other {
		if remoteSecretToken(t, ctx, l.Cluster(r), target) == held[target] {
			t.Errorf("%s still reads %s with the token blue held", r, target)
		}
	}

	// The reconcile passes after the grace revoke the replaced tokens (a
	// pass holds them while a reading istiod reports the cluster unsynced).
	revoked := map[string]bool{}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, false, func(ctx context.Context) (bool, error) {
		if time.Since(start) < h.SupersededGrace {
			return false, nil
		}
		rep, err := h.Apply(ctx, &pair, server.ApplyOptions{Source: "reconcile"})
		if err != nil {
			return false, err
		}
		for _, s := range rep.Steps {
			if strings.HasPrefix(s.Step, "reader ") && s.Action == "revoked" {
				revoked[s.Cluster] = true
			}
		}
		return revoked["red"] && revoked["green"], nil
	})
	if err != nil {
		t.Fatalf("the tokens blue held were not revoked (revoked in %v): %v", revoked, err)
	}
	t.Logf("the tokens blue held revoked %s after the removal's apply began", time.Since(start).Round(100*time.Millisecond))
	for target := range other {
		refusedAt := time.Now()
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			ok, err := federation.Accepted(ctx, conns[target], acct, held[target])
			return err == nil && !ok, nil
		})
		if err != nil {
			t.Errorf("%s: TokenReview still accepts the token blue held, 30s after its revocation", target)
			continue
		}
		t.Logf("%s: TokenReview refuses the token blue held %s after the revoking pass", target, time.Since(refusedAt).Round(10*time.Millisecond))
	}
	// Some reads after the revocation, then the verdict.
	time.Sleep(3 * time.Second)
	for r, target := range other {
		if st := clusterzStatus(t, ctx, istiods[r], target, func(s string) bool { return s == "synced" }); st != "synced" {
			t.Errorf("%s's istiod: %s is %q at the end", r, target, st)
		}
	}
	stopPoll()
	for range other {
		<-polled
	}
	for r, vs := range stats {
		vs.mu.Lock()
		t.Logf("%s's istiod on %s during the removal: %d reads %v (%d failed), longest run not synced %s", r, other[r], vs.reads, vs.seen, vs.failed, vs.longest.Round(10*time.Millisecond))
		for st, n := range vs.seen {
			if st != "synced" && st != "syncing" {
				t.Errorf("%s's istiod: %s was %s in %d of %d reads of clusterz", r, other[r], st, n, vs.reads)
			}
		}
		if vs.reads < 20 || vs.seen["synced"] == 0 {
			t.Errorf("%s's istiod: clusterz read %d times, %v: want it polled all along", r, vs.reads, vs.seen)
		}
		vs.mu.Unlock()
	}
}
