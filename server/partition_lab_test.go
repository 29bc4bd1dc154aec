package server

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestPartitionedReplicaIsFenced: hub-2 is cut off from hub-0 and hub-1
// (its own ring: it hears no gossip of theirs) but reaches etcd. hub-2's
// ring gives it every cluster; hub-0 and hub-1 share them on theirs, so
// each cluster has an owner on both sides, and all three reconcile at once,
// round after round. The per-cluster etcd fence lets one pass at a time
// through for each cluster: no two passes that overlap in time cover a
// cluster in common (the shared journal says which clusters each covered),
// every cluster is reconciled every round, the other side's pass records a
// fence skip for it, and the mesh is still served: a deleted cacerts comes
// back, the majority's ring still gives every cluster an owner, and the
// partitioned replica answers status.
func TestPartitionedReplicaIsFenced(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, m, ns := isolatedHub(ctx, t, l, "etcdpartition")
	hubs, _ := etcdHubs(t, 3, "/partition")
	if rep, err := hubs[0].Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("first apply: %v %v", err, rep.Err())
	}
	key := make([]byte, 32)
	rand.Read(key)
	var rings []*ring.Ring
	var servers []*Server
	for i, h := range hubs {
		h.Progress = nil
		var join []string
		if i == 1 {
			join = []string{rings[0].Members()[0].Addr} // hub-2 joins nobody: the partition
		}
		r, srv := replicaServer(ctx, t, h, fmt.Sprintf("hub-%d", i), join, key)
		rings, servers = append(rings, r), append(servers, srv)
	}
	for len(rings[0].Live()) != 2 || len(rings[1].Live()) != 2 {
		if ctx.Err() != nil {
			t.Fatal("hub-0 and hub-1 never saw each other")
		}
		time.Sleep(50 * time.Millisecond)
	}
	clusters := []string{"east", "west"}
	for _, c := range clusters {
		maj, cut := rings[0].Owner(c), rings[2].Owner(c)
		if (maj != "hub-0" && maj != "hub-1") || cut != "hub-2" {
			t.Fatalf("%s: owner %q on hub-0/1's ring, %q on hub-2's; want one on each side", c, maj, cut)
		}
		t.Logf("%s: owned by %s on the majority's ring and by hub-2 on its own", c, maj)
	}

	east := connectLab(t, l, "east")
	ran, fenced := 0, 0
	const rounds = 6
	for round := range rounds {
		if round == rounds-1 {
			// Drift in the last round: whichever side passes repairs it.
			if err := east.Kube.CoreV1().Secrets(ns).Delete(ctx, "cacerts", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		results := make([]ReconcileResult, len(servers))
		start := make(chan struct{})
		for i, s := range servers {
			wg.Go(func() {
				<-start
				results[i] = s.Reconcile(ctx)
			})
		}
		close(start)
		wg.Wait()
		covered := map[string]int{}
		for i, r := range results {
			switch {
			case r.Err != nil:
				t.Fatalf("round %d, hub-%d: %v", round, i, r.Err)
			case r.Skipped == "ring":
				// hub-0 or hub-1 when the other owns both clusters.
			case r.Skipped != "" && r.Skipped != "fence":
				t.Errorf("round %d, hub-%d: skipped for %q", round, i, r.Skipped)
			}
			fenced += len(r.Fenced)
			if r.Report != nil {
				ran++
				for _, c := range r.Report.Clusters {
					covered[c]++
				}
			}
		}
		for _, c := range clusters {
			if covered[c] == 0 {
				t.Errorf("round %d: no pass reconciled %s", round, c)
			}
		}
	}
	if fenced == 0 {
		t.Errorf("%d passes ran, no cluster was fenced off: the two sides never met at a fence", ran)
	}
	if cc, err := pki.ReadCACerts(ctx, east, ns); err != nil || cc == nil {
		t.Errorf("east's cacerts after the last round: %v, want it restored", err)
	}

	// The shared journal: passes that overlap in time cover no cluster in common.
	recs, err := hubs[2].History(ctx, 100, state.KindReconcile)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Start.Before(recs[j].Start) })
	for i, a := range recs {
		if a.End.IsZero() {
			t.Errorf("reconcile %d never finished", a.ID)
			continue
		}
		if len(a.Clusters) == 0 {
			t.Errorf("reconcile %d does not say which clusters it covered", a.ID)
		}
		for _, b := range recs[i+1:] {
			if !b.Start.Before(a.End) {
				break
			}
			for _, c := range a.Clusters {
				if slices.Contains(b.Clusters, c) {
					t.Errorf("reconcile %d (%s–%s) and %d (from %s) both covered %s", a.ID, a.Start.Format(time.StampMilli), a.End.Format(time.StampMilli), b.ID, b.Start.Format(time.StampMilli), c)
				}
			}
		}
	}
	if len(recs) != ran {
		t.Errorf("journal holds %d reconcile passes, %d ran", len(recs), ran)
	}
	// Any replica serves the API, the partitioned one too.
	if st, err := servers[2].hub.Status(ctx, nil); err != nil || len(st.Clusters) == 0 {
		t.Errorf("status from the partitioned replica: %v", err)
	}
	t.Logf("%d rounds on both sides at once: %d passes ran, %d cluster turns fenced off, no cluster in two overlapping passes", rounds, ran, fenced)
}
