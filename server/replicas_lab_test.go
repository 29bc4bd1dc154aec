package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/state"
)

// etcdHubs starts a three-member etcd cluster and returns n hubs sharing one
// state in it under prefix, each with a client of its own, as replicas have.
func etcdHubs(t *testing.T, n int, prefix string) ([]*Hub, *lab.EtcdCluster) {
	t.Helper()
	bin, err := lab.EtcdBinary()
	if err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ec, err := lab.StartEtcdCluster(ctx, bin, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ec.Close)
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
	hubs, _ := etcdHubs(t, 2, "/apply")
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
	timed := 0
	for _, s := range second.Steps {
		if !s.Start.IsZero() {
			timed++
		}
		if !s.Start.IsZero() && s.Start.Before(first.End) {
			t.Fatalf("apply %d step %s/%s started at %s, before apply %d ended at %s: the applies overlapped", second.ID, s.Cluster, s.Step, s.Start, first.ID, first.End)
		}
	}
	if timed == 0 {
		t.Fatalf("apply %d recorded no step times: nothing shows the order", second.ID)
	}
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
	t.Logf("apply %d: %s..%s; apply %d: %s..%s", first.ID, first.Start.Format(time.StampMilli), first.End.Format(time.StampMilli), second.ID, second.Start.Format(time.StampMilli), second.End.Format(time.StampMilli))
}
