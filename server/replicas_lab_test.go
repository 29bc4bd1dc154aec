package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/state"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdHubs starts a three-member etcd cluster and returns n hubs sharing one
// state in it under prefix, each with a client of its own, as replicas have.
func etcdHubs(t *testing.T, n int, prefix string) ([]*Hub, *lab.EtcdCluster) {
	t.Helper()
	ec := lab.StartTestEtcd(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	var hubs []*Hub
	for range n {
		st, err := state.Open(ctx, ec.StateURL(prefix), state.Options{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		hubs = append(hubs, &Hub{Store: st, Progress: testWriter{t}})
	}
	return hubs, ec
}

// TestConcurrentAppliesOnEtcd: two replicas apply the same mesh at once.
// The apply lock makes one wait for the other: the journal holds both,
// the second's steps all after the first's end, and the root is generated
// once (every cluster's cacerts carries the same root, the one stored).
func TestConcurrentAppliesOnEtcd(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, m, ns := isolatedHub(ctx, t, l, "etcdapply")
	hubs, ec := etcdHubs(t, 2, "/apply")
	var wg sync.WaitGroup
	errs := make([]error, len(hubs))
	for i, h := range hubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := h.Apply(ctx, m, ApplyOptions{})
			if err == nil {
				err = rep.Err()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	var journal []state.ApplyRecord
	var ca state.CA
	err := hubs[1].Store.View(ctx, func(tx *state.Tx) error {
		var err error
		if journal, err = tx.Applies(0); err != nil {
			return err
		}
		ca, _, err = tx.CA()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(journal) != 2 {
		t.Fatalf("journal holds %d applies, want 2", len(journal))
	}
	first, second := journal[1], journal[0] // newest first
	// etcd's revisions order the writes: the second apply's journal entry
	// was created after the first's was last written (its finish).
	cli, err := clientv3.New(clientv3.Config{Endpoints: ec.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	rev := func(id uint64) (created, modified int64) {
		resp, err := cli.Get(ctx, "/apply/journal/k/"+string(binary.BigEndian.AppendUint64(nil, id)))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("journal entry %d in etcd: %v (%d keys)", id, err, len(resp.Kvs))
		}
		return resp.Kvs[0].CreateRevision, resp.Kvs[0].ModRevision
	}
	_, firstDone := rev(first.ID)
	secondBegun, _ := rev(second.ID)
	if secondBegun <= firstDone {
		t.Fatalf("apply %d was journaled at revision %d, before apply %d finished at %d: the applies overlapped", second.ID, secondBegun, first.ID, firstDone)
	}
	t.Logf("apply %d finished at revision %d; apply %d began at revision %d", first.ID, firstDone, second.ID, secondBegun)
	for _, name := range []string{"east", "west"} {
		kc, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.ReadCACerts(ctx, kc, ns)
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		if string(cc.CACerts.RootCert) != string(ca.Bundle()) {
			t.Fatalf("%s: cacerts root differs from the stored root: generated more than once", name)
		}
	}
}

// TestReplicaTakesOverReconcile: three replicas on one etcd state and a
// gossip ring, each reconciling the clusters the ring gives it. The replica
// that owns east stops without a word (its gossip and its loop end, as in a
// crash), and east's cacerts is deleted at once: the survivor the ring now
// names restores it, and the other clusters keep their owners. The stopped
// replica then returns under its name and address: east moves back to it,
// and nothing else moves. The time from the stop to the restore is
// reported, not asserted.
func TestReplicaTakesOverReconcile(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, m, ns := isolatedHub(ctx, t, l, "etcdtakeover")
	hubs, _ := etcdHubs(t, 3, "/takeover")
	if rep, err := hubs[0].Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("first apply: %v %v", err, rep.Err())
	}
	key := make([]byte, 32)
	rand.Read(key)
	var rings []*ring.Ring
	var stops []context.CancelFunc
	var dones []chan struct{}
	var servers []*Server
	var binds []string
	run := func(srv *Server) (context.CancelFunc, chan struct{}) {
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); srv.Run(runCtx) }()
		t.Cleanup(func() { stop(); <-done })
		return stop, done
	}
	for i, h := range hubs {
		h.Progress = nil
		var join []string
		if i > 0 {
			join = []string{binds[0]}
		}
		bind := freeLoopback(t)
		r, srv := replicaServerAt(ctx, t, h, fmt.Sprintf("hub-%d", i), bind, join, key)
		stop, done := run(srv)
		rings, stops, dones, servers, binds = append(rings, r), append(stops, stop), append(dones, done), append(servers, srv), append(binds, bind)
	}
	for _, r := range rings {
		for len(r.Live()) != 3 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	owner := rings[0].Owner("east")
	var oi int
	for i, r := range rings {
		if r.Name() == owner {
			oi = i
		}
	}
	survivor := servers[(oi+1)%3]
	before, err := survivor.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	east := connectLab(t, l, "east")
	// The owner's first pass must be over: a pass still running when it is
	// stopped could restore the cacerts itself, which a SIGKILL would not.
	for testutil.ToFloat64(servers[oi].metrics.reconciles) < 1 {
		if ctx.Err() != nil {
			t.Fatal("the owner never finished a reconcile pass")
		}
		time.Sleep(50 * time.Millisecond)
	}

	killed := time.Now()
	rings[oi].Shutdown()
	stops[oi]()
	// A pass that began before the stop may finish within the grace period;
	// only once Run has returned can no write of the owner's be in flight.
	<-dones[oi]
	if err := east.Kube.CoreV1().Secrets(ns).Delete(ctx, "cacerts", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		cc, err := pki.ReadCACerts(ctx, east, ns)
		if err == nil && cc != nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("east's cacerts was not restored: %v", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	restored := time.Since(killed)
	// The survivor that restored the cacerts saw the owner dead; the other
	// may hear of it a gossip round later.
	ms := waitMembers(ctx, t, survivor, func(ms *Members) bool { return ms.Owners["east"] != owner })
	t.Logf("%s (owner of east) stopped; east's cacerts deleted and restored by %s after %s", owner, ms.Owners["east"], restored.Round(time.Millisecond))
	for c, o := range before.Owners {
		if o != owner && ms.Owners[c] != o {
			t.Errorf("%s moved from %s to %s, though its owner is alive", c, o, ms.Owners[c])
		}
	}
	for _, mb := range ms.Members {
		t.Logf("member %s: %s, clusters %v", mb.Name, mb.State, mb.Clusters)
		if mb.Name == owner && (mb.State != "gone" || len(mb.Clusters) != 0) {
			t.Errorf("members: the stopped %s is %s with clusters %v, want gone with none", owner, mb.State, mb.Clusters)
		}
	}

	// The owner returns: its clusters come back to it, the others stay.
	r, srv := replicaServerAt(ctx, t, hubs[oi], owner, binds[oi], []string{binds[(oi+1)%3]}, key)
	rings[oi], servers[oi] = r, srv
	run(srv)
	back := waitMembers(ctx, t, survivor, func(ms *Members) bool { return ms.Owners["east"] == owner })
	for c, o := range before.Owners {
		if back.Owners[c] != o {
			t.Errorf("after %s returned, %s is owned by %s, want %s as before", owner, c, back.Owners[c], o)
		}
	}
	t.Logf("%s returned: owners %v, as before the stop", owner, back.Owners)
}

// waitMembers asks s for its members until ok says they are as wanted.
func waitMembers(ctx context.Context, t *testing.T, s *Server, ok func(*Members) bool) *Members {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, err := s.Members(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok(ms) {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("members of %s not as wanted after 20s: owners %v", ms.Self, ms.Owners)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// replicaServer joins h to a gossip ring as name (join: the ring to join,
// none for a ring of its own) and returns the ring and a Server on it, not
// yet running.
func replicaServer(ctx context.Context, t *testing.T, h *Hub, name string, join []string, key []byte) (*ring.Ring, *Server) {
	t.Helper()
	return replicaServerAt(ctx, t, h, name, freeLoopback(t), join, key)
}

// replicaServerAt is replicaServer gossiping on bind (a replica that
// returns does so at its old address, as a StatefulSet's pod does).
func replicaServerAt(ctx context.Context, t *testing.T, h *Hub, name, bind string, join []string, key []byte) (*ring.Ring, *Server) {
	t.Helper()
	r, err := ring.Join(ring.Config{Name: name, Bind: bind, Join: join, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown() })
	srv, err := NewServer(ctx, h, ServerOptions{Listen: "127.0.0.1:0", Token: strings.Repeat("t", 32), Ring: r,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GracePeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r, srv
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
