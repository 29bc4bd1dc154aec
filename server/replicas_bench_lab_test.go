package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server/state"
)

// TestReplicaStateBenchmark measures, in one run on the same lab clusters,
// a reconcile pass (a no-op re-apply of the two-cluster mesh) on a single
// hub's bbolt file and on a replica's three-member etcd state: time per pass
// and etcd round trips per pass. A benchmark, not a test: FLOTILLA_BENCH=1
// runs it (FLOTILLA_BENCH_N passes, default 5). Figures are printed, never
// asserted.
func TestReplicaStateBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "1" {
		t.Skip("benchmark: set FLOTILLA_BENCH=1")
	}
	n := 5
	if v := os.Getenv("FLOTILLA_BENCH_N"); v != "" {
		if i, err := strconv.Atoi(v); err == nil && i > 0 {
			n = i
		}
	}
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, backend := range []string{"bbolt", "etcd"} {
		_, m, _ := isolatedHub(ctx, t, l, "bench"+backend)
		var h *Hub
		if backend == "etcd" {
			hubs, _ := etcdHubs(t, 1, "/bench")
			h = hubs[0]
		} else {
			st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			h = &Hub{Store: st}
		}
		h.Progress = nil
		first := time.Now()
		if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
			t.Fatalf("%s: first apply: %v %v", backend, err, rep.Err())
		}
		firstTook := time.Since(first)
		trips0 := h.Store.RoundTrips()
		var total time.Duration
		for range n {
			start := time.Now()
			if rep, err := h.Apply(ctx, nil, ApplyOptions{}); err != nil || rep.Err() != nil {
				t.Fatalf("%s: reconcile pass: %v %v", backend, err, rep.Err())
			}
			total += time.Since(start)
		}
		line := fmt.Sprintf("bench %-5s first apply %8s; reconcile pass mean %8s over %d; state round trips per pass %d; apply lock wait total %s",
			backend, firstTook.Round(time.Millisecond), (total / time.Duration(n)).Round(time.Millisecond), n,
			(h.Store.RoundTrips()-trips0)/uint64(n), h.Store.LockWait().Round(time.Microsecond))
		fmt.Println(line)
		t.Log(line)
	}
}
