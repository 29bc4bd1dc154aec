package server

import (
	"context"
	"crypto/rand"
	"fmt"
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
// (its own ring: it hears no gossip of theirs) but reaches etcd. Both sides
// believe they own the reconcile, and both try at once, round after round.
// The etcd fence lets one through at a time: no two reconcile passes of
// the shared journal overlap, the other side records a fence skip, and
// the mesh is still served from either side: a deleted cacerts comes back,
// and the partitioned replica answers status.
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
	// The owner on each side of the partition.
	var majority *Server
	for i := range 2 {
		if rings[i].Owns(reconcileKey) {
			majority = servers[i]
		}
	}
	partitioned := servers[2]
	if majority == nil || !rings[2].Owns(reconcileKey) {
		t.Fatalf("want an owner on each side: %s on hub-0/1's ring, %s on hub-2's", rings[0].Owner(reconcileKey), rings[2].Owner(reconcileKey))
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
		results := make([]ReconcileResult, 2)
		start := make(chan struct{})
		for i, s := range []*Server{majority, partitioned} {
			wg.Go(func() {
				<-start
				results[i] = s.Reconcile(ctx)
			})
		}
		close(start)
		wg.Wait()
		for i, r := range results {
			switch {
			case r.Err != nil:
				t.Fatalf("round %d, side %d: %v", round, i, r.Err)
			case r.Skipped == "fence":
				fenced++
			case r.Skipped != "":
				t.Errorf("round %d, side %d: skipped for %q, want the ring to name it owner", round, i, r.Skipped)
			default:
				ran++
			}
		}
	}
	if fenced == 0 {
		t.Errorf("%d passes ran, none was fenced off: the two owners never met at the fence", ran)
	}
	if cc, err := pki.ReadCACerts(ctx, east, ns); err != nil || cc == nil {
		t.Errorf("east's cacerts after the last round: %v, want it restored", err)
	}

	// The shared journal: no two reconcile passes overlap.
	recs, err := hubs[2].History(ctx, 100, state.KindReconcile)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Start.Before(recs[j].Start) })
	for i := 1; i < len(recs); i++ {
		if prev := recs[i-1]; prev.End.IsZero() || recs[i].Start.Before(prev.End) {
			t.Errorf("reconcile %d (%s–%s) overlaps reconcile %d from %s", prev.ID, prev.Start.Format(time.StampMilli), prev.End.Format(time.StampMilli), recs[i].ID, recs[i].Start.Format(time.StampMilli))
		}
	}
	if len(recs) != ran {
		t.Errorf("journal holds %d reconcile passes, %d ran", len(recs), ran)
	}
	// Any replica serves the API, the partitioned one too.
	if st, err := partitioned.hub.Status(ctx, nil); err != nil || len(st.Clusters) == 0 {
		t.Errorf("status from the partitioned replica: %v", err)
	}
	t.Logf("%d rounds on both sides at once: %d passes ran, %d fenced off, none overlapping", rounds, ran, fenced)
}
