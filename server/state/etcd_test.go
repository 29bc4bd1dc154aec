package state

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func openEtcdStoreT(t *testing.T, url string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestParseEtcdURL(t *testing.T) {
	tests := []struct {
		in      string
		want    EtcdConfig
		wantErr string
	}{
		{in: "etcd://a:2379", want: EtcdConfig{Endpoints: []string{"http://a:2379"}, Prefix: "/flotilla"}},
		{in: "etcd://a:2379,b:2379/?prefix=mesh1/", want: EtcdConfig{Endpoints: []string{"http://a:2379", "http://b:2379"}, Prefix: "/mesh1"}},
		{in: "etcd://a:2379?cacert=/ca.pem&cert=/c.pem&key=/k.pem", want: EtcdConfig{Endpoints: []string{"https://a:2379"}, Prefix: "/flotilla", CACert: "/ca.pem", Cert: "/c.pem", Key: "/k.pem"}},
		{in: "etcd://a:2379?cert=/c.pem", wantErr: "cert and key go together"},
		{in: "etcd://a:2379?user=x", wantErr: `unknown parameter "user"`},
		{in: "etcd://", wantErr: "no endpoint"},
		{in: "/var/lib/flotilla/state.db", wantErr: "not an etcd:// URL"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseEtcdURL(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Endpoints, tt.want.Endpoints) || got.Prefix != tt.want.Prefix || got.CACert != tt.want.CACert || got.Cert != tt.want.Cert || got.Key != tt.want.Key {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s == sub || indexOf(s, sub) >= 0))
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// exercise writes the same records through the typed API and reads them
// back; both backends must answer alike.
func exercise(t *testing.T, s *Store) string {
	t.Helper()
	ctx := context.Background()
	err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.InitCA(CA{RootCertPEM: []byte("root"), Source: CAGenerated}, []byte("root key")); err != nil {
			return err
		}
		for _, c := range []string{"west", "east", "north"} {
			if err := tx.PutIntermediate(c, []byte("cert "+c), []byte("key "+c)); err != nil {
				return err
			}
		}
		return tx.PutValue("removals", []string{"gone"})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		err := s.Update(ctx, func(tx *Tx) error {
			id, err := tx.AppendApply(ApplyRecord{SpecHash: fmt.Sprint(i)})
			if err != nil {
				return err
			}
			return tx.AddApplyStep(id, StepRecord{Step: "ca", Result: "unchanged"})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Update(ctx, func(tx *Tx) error { return tx.DeleteCluster("north") }); err != nil {
		t.Fatal(err)
	}
	var out string
	err = s.View(ctx, func(tx *Tx) error {
		if err := tx.InitCA(CA{}, nil); !errors.Is(err, ErrCAExists) {
			return fmt.Errorf("InitCA on a state with a CA: %v", err)
		}
		ca, _, err := tx.CA()
		if err != nil {
			return err
		}
		rk, err := tx.RootKey()
		if err != nil {
			return err
		}
		out += fmt.Sprintf("ca=%s haskey=%v rootkey=%s\n", ca.RootCertPEM, ca.HasRootKey, rk)
		cs, err := tx.Clusters()
		if err != nil {
			return err
		}
		for _, c := range cs {
			k, err := tx.IntermediateKey(c.Name)
			if err != nil {
				return err
			}
			out += fmt.Sprintf("cluster %s cert=%s key=%s\n", c.Name, c.IntermediateCertPEM, k)
		}
		as, err := tx.Applies(3)
		if err != nil {
			return err
		}
		for _, a := range as {
			out += fmt.Sprintf("apply %d %s steps=%d\n", a.ID, a.SpecHash, len(a.Steps))
		}
		var rm []string
		if _, err := tx.Value("removals", &rm); err != nil {
			return err
		}
		out += fmt.Sprintf("removals=%v\n", rm)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBackendsAgree: the records read back the same from bbolt and etcd,
// with a journal limit that trims.
func TestBackendsAgree(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	key := newKey(t)
	opts := Options{Key: key, JournalLimit: 3}
	got := map[string]string{}
	for _, tt := range []struct{ name, state string }{
		{"bbolt", filepath.Join(t.TempDir(), "state.db")},
		{"etcd", c.StateURL("/agree")},
	} {
		got[tt.name] = exercise(t, openEtcdStoreT(t, tt.state, opts))
	}
	if got["bbolt"] != got["etcd"] {
		t.Fatalf("backends differ:\nbbolt:\n%s\netcd:\n%s", got["bbolt"], got["etcd"])
	}
	t.Logf("both backends:\n%s", got["etcd"])
}

// TestEtcdSealsAndChecksTheKey: secrets are sealed in etcd, a wrong key is
// refused, a missing key too unless optional.
func TestEtcdSealsAndChecksTheKey(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	url := c.StateURL("/keys")
	s := openEtcdStoreT(t, url, Options{Key: newKey(t)})
	exercise(t, s)
	tests := []struct {
		name string
		opts Options
		want error
	}{
		{"wrong key", Options{Key: newKey(t)}, ErrWrongKey},
		{"no key", Options{}, ErrKeyRequired},
		{"no key, optional", Options{KeyOptional: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s2, err := Open(context.Background(), url, tt.opts)
			if err == nil {
				s2.Close()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	// No private key in the clear anywhere under the prefix.
	be := s.be.(*etcdBackend)
	resp, err := be.cli.Get(context.Background(), "/keys/", withPrefix()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), "root key") || strings.Contains(string(kv.Value), "key west") {
			t.Fatalf("%s holds a private key in the clear", kv.Key)
		}
	}
}

// TestEtcdReplicasWriteConcurrently: two stores (two replicas) append to
// one journal at once; every entry lands once with its own ID.
func TestEtcdReplicasWriteConcurrently(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	url := c.StateURL("/concurrent")
	stores := []*Store{openEtcdStoreT(t, url, Options{}), openEtcdStoreT(t, url, Options{})}
	const per = 15
	var wg sync.WaitGroup
	errs := make(chan error, 2*per)
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				errs <- s.Update(context.Background(), func(tx *Tx) error {
					_, err := tx.AppendApply(ApplyRecord{SpecHash: fmt.Sprintf("r%d-%d", i, j)})
					return err
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var ids []uint64
	stores[0].View(context.Background(), func(tx *Tx) error {
		as, err := tx.Applies(0)
		for _, a := range as {
			ids = append(ids, a.ID)
		}
		return err
	})
	slices.Sort(ids)
	if len(ids) != 2*per || ids[0] != 1 || ids[len(ids)-1] != 2*per {
		t.Fatalf("journal IDs %v, want 1..%d once each", ids, 2*per)
	}
}

// TestEtcdApplyLock: the apply lock is held by one store at a time across
// processes' clients; a fence taken is refused to the next until released.
func TestEtcdApplyLock(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	url := c.StateURL("/lock")
	a, b := openEtcdStoreT(t, url, Options{}), openEtcdStoreT(t, url, Options{})
	ctx := context.Background()
	unlock, err := a.Lock(ctx, "apply")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := b.Lock(ctx, "apply")
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned (%v) while the first held it", err)
	case <-time.After(300 * time.Millisecond):
	}
	unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	f, ok, err := a.TryFence(ctx, "reconcile/east", 5)
	if err != nil || !ok {
		t.Fatalf("TryFence on a free lock: ok=%v err=%v", ok, err)
	}
	if _, ok, err := b.TryFence(ctx, "reconcile/east", 5); err != nil || ok {
		t.Fatalf("TryFence on a held lock: ok=%v err=%v, want refused", ok, err)
	}
	f.Release()
	f2, ok, err := b.TryFence(ctx, "reconcile/east", 5)
	if err != nil || !ok {
		t.Fatalf("TryFence after release: ok=%v err=%v", ok, err)
	}
	f2.Release()
}

// TestEtcdQuorumLoss: one member down, the state works; two down, a write
// fails naming the quorum loss and writes nothing, reads still answer;
// members back, writes resume.
func TestEtcdQuorumLoss(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	s := openEtcdStoreT(t, c.StateURL("/quorum"), Options{Key: newKey(t)})
	ctx := context.Background()
	exercise(t, s)
	put := func(name string) error {
		return s.Update(ctx, func(tx *Tx) error {
			if err := tx.PutIntermediate(name, []byte("cert "+name), []byte("key "+name)); err != nil {
				return err
			}
			_, err := tx.AppendApply(ApplyRecord{SpecHash: name})
			return err
		})
	}
	c.Stop(0)
	if err := put("one-down"); err != nil {
		t.Fatalf("write with one member of three down: %v", err)
	}
	c.Stop(1)
	err := put("two-down")
	var qe *QuorumError
	if !errors.As(err, &qe) {
		t.Fatalf("write with two members of three down: got %v, want a QuorumError", err)
	}
	t.Logf("write without quorum: %v", err)
	var names []string
	err = s.View(ctx, func(tx *Tx) error {
		cs, err := tx.Clusters()
		for _, c := range cs {
			names = append(names, c.Name)
		}
		return err
	})
	if err != nil {
		t.Fatalf("read without quorum: %v", err)
	}
	if !slices.Contains(names, "one-down") || slices.Contains(names, "two-down") {
		t.Fatalf("clusters read without quorum: %v, want one-down and not two-down", names)
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping answered without quorum")
	}
	for _, i := range []int{0, 1} {
		if err := c.Restart(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	// The members need a moment to elect a leader: retry the write until
	// it commits, bounded by the test's context rather than a timing claim.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if err = put("back"); err == nil || wctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("write after the members came back: %v", err)
	}
	err = s.View(ctx, func(tx *Tx) error {
		if _, ok, _ := tx.Cluster("two-down"); ok {
			return errors.New("the failed write left a cluster record")
		}
		as, err := tx.Applies(0)
		for _, a := range as {
			if a.SpecHash == "two-down" {
				return errors.New("the failed write left a journal entry")
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrate: bbolt to etcd and back, verified, secrets still open.
func TestMigrate(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	key := newKey(t)
	ctx := context.Background()
	src := openEtcdStoreT(t, filepath.Join(t.TempDir(), "src.db"), Options{Key: key})
	exercise(t, src)
	mid := openEtcdStoreT(t, c.StateURL("/migrated"), Options{Key: key})
	back := openEtcdStoreT(t, filepath.Join(t.TempDir(), "back.db"), Options{Key: key})
	for _, step := range []struct {
		name     string
		dst, src *Store
	}{{"bbolt to etcd", mid, src}, {"etcd to bbolt", back, mid}} {
		rep, err := Copy(ctx, step.dst, step.src)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if rep.Secrets != 3 { // the root key and the keys of east and west
			t.Fatalf("%s: %d secrets verified, want 3", step.name, rep.Secrets)
		}
		t.Logf("%s: %d records, %d secrets, digest %s", step.name, rep.Records, rep.Secrets, rep.Digest)
	}
	if _, err := Copy(ctx, mid, src); err == nil {
		t.Fatal("Copy into a state that is not empty succeeded")
	}
	for _, s := range []*Store{mid, back} {
		var got string
		err := s.View(ctx, func(tx *Tx) error {
			cs, err := tx.Clusters()
			for _, c := range cs {
				got += c.Name + " "
			}
			return err
		})
		if err != nil || got != "east west " {
			t.Fatalf("%s after migrate: clusters %q, %v", s.Path(), got, err)
		}
	}
}

func withPrefix() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithPrefix()} }

// TestEtcdTLS: against an etcd cluster that takes clients over TLS only,
// with a certificate its CA signed, the state works with the client's
// certificate and is refused without it, or without TLS at all.
func TestEtcdTLS(t *testing.T) {
	c := lab.StartTestEtcdTLS(t, 3)
	key := newKey(t)
	s := openEtcdStoreT(t, c.StateURL("/tls"), Options{Key: key})
	exercise(t, s)
	s.Close()

	files := c.TLS()
	plain := "etcd://" + strings.Join(c.Endpoints(), ",") + "/?prefix=/tls"
	tests := []struct {
		name, url string
	}{
		{"no client certificate", plain + "&cacert=" + files.CACert},
		{"no TLS", plain},
		{"another CA", plain + "&cacert=" + files.ClientCert + "&cert=" + files.ClientCert + "&key=" + files.ClientKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s2, err := Open(ctx, tt.url, Options{Key: key})
			if err == nil {
				s2.Close()
				t.Fatal("opened the state, want a refusal")
			}
			if !strings.Contains(err.Error(), "etcd") {
				t.Errorf("error %q does not name etcd", err)
			}
			t.Logf("%s: %v", tt.name, err)
		})
	}
}

// TestJournalDefaultsAgree: both backends keep reconcile runs by default
// (the etcd store once trimmed each as it was written, so every reconcile
// on etcd failed to finish its entry).
func TestJournalDefaultsAgree(t *testing.T) {
	c := lab.StartTestEtcd(t, 1)
	for _, path := range []string{filepath.Join(t.TempDir(), "state.db"), c.StateURL("/journal")} {
		t.Run(map[bool]string{true: "etcd", false: "bbolt"}[IsEtcd(path)], func(t *testing.T) {
			s, err := Open(context.Background(), path, Options{Key: newKey(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var id uint64
			if err := s.Update(context.Background(), func(tx *Tx) error {
				id, err = tx.AppendApply(ApplyRecord{Kind: KindReconcile, Start: time.Now()})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := s.Update(context.Background(), func(tx *Tx) error { return tx.FinishApply(id, time.Now(), "succeeded") }); err != nil {
				t.Fatalf("finish reconcile entry %d: %v", id, err)
			}
		})
	}
}

// TestEtcdRecordConflicts: a transaction that read single records retries
// only when one of those records changed under it, not when another record
// of the same bucket did (replicas journaling their own passes do not retry
// each other's writes); a transaction that listed a bucket retries on any
// write to it. Each case: transaction A reads, B commits from another
// store, then A writes and commits; attempts counts A's runs.
func TestEtcdRecordConflicts(t *testing.T) {
	c := lab.StartTestEtcd(t, 3)
	readA := func(tx *Tx) error { var v string; _, err := tx.Value("a", &v); return err }
	listJournal := func(tx *Tx) error { _, err := tx.Journal(0, ""); return err }
	put := func(key string) func(tx *Tx) error {
		return func(tx *Tx) error { return tx.PutValue(key, "from b") }
	}
	appendEntry := func(tx *Tx) error { _, err := tx.AppendApply(ApplyRecord{SpecHash: "b"}); return err }
	tests := []struct {
		name     string
		aReads   func(tx *Tx) error
		bWrites  func(tx *Tx) error
		attempts int
	}{
		{"another record", readA, put("b"), 1},
		{"the same record", readA, put("a"), 2},
		{"a listed bucket", listJournal, appendEntry, 2},
		{"a bucket not read", listJournal, put("b"), 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := c.StateURL(fmt.Sprintf("/conflicts%d", i))
			a, b := openEtcdStoreT(t, url, Options{}), openEtcdStoreT(t, url, Options{})
			ctx := context.Background()
			attempts := 0
			err := a.Update(ctx, func(tx *Tx) error {
				attempts++
				if err := tc.aReads(tx); err != nil {
					return err
				}
				if attempts == 1 {
					if err := b.Update(ctx, tc.bWrites); err != nil {
						return err
					}
				}
				return tx.PutValue("a", fmt.Sprintf("from a, attempt %d", attempts))
			})
			if err != nil {
				t.Fatal(err)
			}
			if attempts != tc.attempts {
				t.Errorf("A ran %d time(s), want %d", attempts, tc.attempts)
			}
			var got string
			if err := b.View(ctx, func(tx *Tx) error { _, err := tx.Value("a", &got); return err }); err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("from a, attempt %d", attempts); got != want {
				t.Errorf("a = %q, want %q", got, want)
			}
		})
	}
}
