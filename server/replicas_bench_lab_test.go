package server

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/spec"
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

// TestFleetShardingBenchmark measures the reconcile of a fleet sharded over
// the ring: a lab of its own with FLOTILLA_BENCH_FLEET clusters (default
// 20) in one multi-primary mesh, reconciled (a) by a single hub on bbolt,
// (b) by three replicas on a three-member etcd state and one gossip ring,
// all three passing at once, each over the clusters the ring gives it, and
// (c) by one replica on that etcd state owning the whole fleet. Figures per
// pass: the time of the full pass of the fleet (for (b), from the common
// start to the last replica's end) and, per replica, the clusters it owns,
// its pass time and its etcd round trips; ratios against (a). A benchmark,
// not a test: FLOTILLA_BENCH=1 runs it (FLOTILLA_BENCH_N passes, default 3).
// Figures are printed, never asserted.
func TestFleetShardingBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "1" {
		t.Skip("benchmark: set FLOTILLA_BENCH=1")
	}
	passes := 3
	if v := os.Getenv("FLOTILLA_BENCH_N"); v != "" {
		if i, err := strconv.Atoi(v); err == nil && i > 0 {
			passes = i
		}
	}
	size := 20
	if v := os.Getenv("FLOTILLA_BENCH_FLEET"); v != "" {
		if i, err := strconv.Atoi(v); err == nil && i > 1 {
			size = i
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	names := make([]string, size)
	for i := range names {
		names[i] = fmt.Sprintf("f%02d", i+1)
	}
	// The fleet starts in labs of a few clusters, one after the other: a
	// loaded two-core machine does not bring twenty API servers up at once.
	batch := 5
	if v := os.Getenv("FLOTILLA_BENCH_BATCH"); v != "" {
		if i, err := strconv.Atoi(v); err == nil && i > 0 {
			batch = i
		}
	}
	labStart := time.Now()
	var labs []*lab.Lab
	for from := 0; from < size; from += batch {
		l, err := lab.Start(ctx, lab.Options{Clusters: names[from:min(from+batch, size)], Log: os.Stderr})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Stop()
		labs = append(labs, l)
	}
	say := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		fmt.Println(line)
		t.Log(line)
	}
	say("fleet: %d lab clusters started in %s (%d labs)", size, time.Since(labStart).Round(time.Second), len(labs))
	reset := func() {
		for _, l := range labs {
			resetSail(ctx, t, l)
		}
	}

	// (a) One hub on bbolt, without a ring: it owns the fleet.
	reset()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	single := &Hub{Store: st}
	first := time.Now()
	if rep, err := single.Apply(ctx, fleetMesh(t, labs, "fleetbolt"), ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("bbolt: first apply: %v %v", err, rep.Err())
	}
	say("fleet: bbolt hub: first apply of %d clusters %s", size, time.Since(first).Round(time.Millisecond))
	boltSrv := fleetServer(ctx, t, single, nil)
	var boltTimes []time.Duration
	for range passes {
		d, res := timedReconcile(ctx, t, boltSrv)
		if len(res.Report.Clusters) != size {
			t.Fatalf("bbolt: the pass covered %d clusters, want %d", len(res.Report.Clusters), size)
		}
		boltTimes = append(boltTimes, d)
	}
	reset()

	// (b) Three replicas on etcd, sharded by the ring.
	hubs, _ := etcdHubs(t, 3, "/fleet")
	for _, h := range hubs {
		h.Progress = nil
	}
	first = time.Now()
	if rep, err := hubs[0].Apply(ctx, fleetMesh(t, labs, "fleetetcd"), ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("etcd: first apply: %v %v", err, rep.Err())
	}
	say("fleet: etcd hub: first apply of %d clusters %s", size, time.Since(first).Round(time.Millisecond))
	gossipKey := make([]byte, 32)
	rand.Read(gossipKey)
	var replicas []*Server
	var rings []*ring.Ring
	for i, h := range hubs {
		var join []string
		if i > 0 {
			join = []string{rings[0].Members()[0].Addr}
		}
		r, srv := replicaServer(ctx, t, h, fmt.Sprintf("hub-%d", i), join, gossipKey)
		rings, replicas = append(rings, r), append(replicas, srv)
	}
	for _, r := range rings {
		for len(r.Live()) != len(rings) {
			if ctx.Err() != nil {
				t.Fatal("the replicas never formed a ring")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	owned := ring.Assign(names, rings[0].Live())
	type replicaFigures struct {
		times []time.Duration
		trips uint64
	}
	figs := make([]replicaFigures, len(replicas))
	var fleetTimes []time.Duration
	for range passes {
		trips := make([]uint64, len(hubs))
		for i, h := range hubs {
			trips[i] = h.Store.RoundTrips()
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		began := time.Now()
		covered := make([][]string, len(replicas))
		for i, srv := range replicas {
			wg.Go(func() {
				<-start
				d, res := timedReconcile(ctx, t, srv)
				figs[i].times = append(figs[i].times, d)
				if res.Report != nil {
					covered[i] = res.Report.Clusters
				}
			})
		}
		close(start)
		wg.Wait()
		fleetTimes = append(fleetTimes, time.Since(began))
		all := 0
		for i, h := range hubs {
			figs[i].trips += h.Store.RoundTrips() - trips[i]
			all += len(covered[i])
			if !slices.Equal(covered[i], owned[rings[i].Name()]) {
				t.Errorf("hub-%d covered %v, the ring gives it %v", i, covered[i], owned[rings[i].Name()])
			}
		}
		if all != size {
			t.Errorf("the replicas covered %d clusters in all, want %d", all, size)
		}
	}

	// (c) One replica on the same etcd state owning the whole fleet.
	one := fleetServer(ctx, t, hubs[0], nil)
	var oneTimes []time.Duration
	for range passes {
		d, res := timedReconcile(ctx, t, one)
		if res.Report == nil || len(res.Report.Clusters) != size {
			t.Fatalf("etcd, one replica: the pass did not cover the %d clusters", size)
		}
		oneTimes = append(oneTimes, d)
	}
	reset()

	bolt := meanDuration(boltTimes)
	say("fleet: %d clusters, multi-primary (%d remote secrets), %d pass(es) each, means:", size, size*(size-1), passes)
	say("fleet: (a) single hub, bbolt:             full pass %8s  (ratio 1.00)", bolt.Round(time.Millisecond))
	fleet := meanDuration(fleetTimes)
	say("fleet: (b) 3 replicas, etcd, sharded:     full pass %8s  (ratio %.2f)", fleet.Round(time.Millisecond), float64(fleet)/float64(bolt))
	for i, r := range rings {
		d := meanDuration(figs[i].times)
		say("fleet:     %s owns %2d clusters: pass %8s (ratio %.2f), etcd round trips per pass %d  %v",
			r.Name(), len(owned[r.Name()]), d.Round(time.Millisecond), float64(d)/float64(bolt), figs[i].trips/uint64(passes), owned[r.Name()])
	}
	whole := meanDuration(oneTimes)
	say("fleet: (c) 1 replica, etcd, whole fleet:  full pass %8s  (ratio %.2f)", whole.Round(time.Millisecond), float64(whole)/float64(bolt))
}

// fleetMesh is a multi-primary mesh of every cluster of labs, one network
// each, in control-plane namespace ns.
func fleetMesh(t testing.TB, labs []*lab.Lab, ns string) *spec.Mesh {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: fleet}\nspec:\n  topology: multi-primary\n  controlPlaneNamespace: %s\n  allowLoopbackAPIServers: true\n  pki: {keyAlgorithm: ECDSA-P256}\n  clusters:\n", ns)
	n := 0
	for _, l := range labs {
		for _, c := range l.Clusters() {
			n++
			fmt.Fprintf(&b, "  - {name: %s, context: %s, network: network%d, kubeconfig: %s}\n", c.Name, c.Name, n, l.Kubeconfig)
		}
	}
	m, err := spec.Parse("fleet.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fleetServer is a Server on h (on r's ring; nil: a single hub), not running.
func fleetServer(ctx context.Context, t *testing.T, h *Hub, r *ring.Ring) *Server {
	t.Helper()
	srv, err := NewServer(ctx, h, ServerOptions{Listen: "127.0.0.1:0", Token: strings.Repeat("t", 32), Ring: r,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GracePeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// timedReconcile runs one reconcile pass of srv and fails on any failure (a
// replica the ring gives no cluster passes without one).
func timedReconcile(ctx context.Context, t *testing.T, srv *Server) (time.Duration, ReconcileResult) {
	t.Helper()
	start := time.Now()
	res := srv.Reconcile(ctx)
	d := time.Since(start)
	switch {
	case res.Err != nil:
		t.Errorf("reconcile: %v", res.Err)
	case res.Skipped == "ring":
	case res.Skipped != "":
		t.Errorf("reconcile skipped: %s", res.Skipped)
	case res.Report.Err() != nil:
		t.Errorf("reconcile: %v", res.Report.Err())
	}
	return d, res
}

func meanDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}
