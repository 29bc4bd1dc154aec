package state

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EtcdScheme starts a --state that names an etcd cluster rather than a file:
// etcd://host:2379,host:2379/?prefix=/flotilla&cacert=F&cert=F&key=F.
const EtcdScheme = "etcd://"

// DefaultEtcdPrefix is where the state lives in etcd when the URL names no prefix.
const DefaultEtcdPrefix = "/flotilla"

// etcd timeouts: one request, and the lease that frees a dead holder's lock.
const (
	etcdRequestTimeout = 10 * time.Second
	etcdReadTimeout    = 3 * time.Second
	etcdLockTTL        = 10 // seconds
	etcdMaxRetries     = 50
)

// QuorumError means etcd could not commit or answer because fewer than a
// majority of its members are reachable (or it has no leader).
type QuorumError struct {
	Cluster string
	Err     error
}

func (e *QuorumError) Error() string {
	return fmt.Sprintf("etcd %s has lost quorum (no leader, or fewer than a majority of members answer): the write was not confirmed; etcd commits a transaction whole or not at all, so the state holds all of it or none: %v", e.Cluster, e.Err)
}

func (e *QuorumError) Unwrap() error { return e.Err }

// quorumLost: the errors etcd and its client give when there is no majority.
func quorumLost(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	msg := err.Error()
	return strings.Contains(msg, "no leader") || strings.Contains(msg, "request timed out")
}

// etcdBackend keeps the buckets in etcd under a prefix:
//
//	<prefix>/<bucket>/k/<key>  a record, the same bytes bbolt holds
//	<prefix>/<bucket>/seq      the bucket's sequence (journal IDs)
//	<prefix>/<bucket>/rev      touched by every transaction that writes the bucket
//	<prefix>/locks/<name>      concurrency.Mutex keys
//
// A transaction reads a snapshot (one revision) and commits as one etcd Txn
// whose compares say that no bucket it read was written since: the rev
// markers make deletions visible too, which a compare on the records alone
// would miss. On conflict the function runs again on a new snapshot, as
// concurrency.NewSTM does; unlike STM it can list a bucket.
type etcdBackend struct {
	cfg        EtcdConfig
	cli        *clientv3.Client
	roundTrips atomic.Uint64
}

func openEtcd(ctx context.Context, cfg EtcdConfig) (*etcdBackend, error) {
	tc, err := cfg.tls()
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", cfg, err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         tc,
		DialTimeout: 5 * time.Second,
		Context:     context.WithoutCancel(ctx),
		// The client's own logger would print every retry to stderr.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", cfg, err)
	}
	return &etcdBackend{cfg: cfg, cli: cli}, nil
}

// unreachable asks every member's /health over the client's own transport
// and returns why none answered at all, or nil when one did (even if
// unhealthy: then quorum is what is missing).
func (b *etcdBackend) unreachable() error {
	tc, err := b.cfg.tls()
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	var errs []error
	for _, ep := range b.cfg.Endpoints {
		resp, err := hc.Get(ep + "/health")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (b *etcdBackend) bucketPrefix(name string) string { return b.cfg.Prefix + "/" + name + "/" }
func (b *etcdBackend) recordKey(bucket string, key []byte) string {
	return b.bucketPrefix(bucket) + "k/" + string(key)
}
func (b *etcdBackend) revKey(bucket string) string { return b.bucketPrefix(bucket) + "rev" }
func (b *etcdBackend) seqKey(bucket string) string { return b.bucketPrefix(bucket) + "seq" }

func (b *etcdBackend) wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var qe *QuorumError
	if errors.As(err, &qe) || errors.Is(err, ErrReadOnly) {
		return err
	}
	if quorumLost(err) {
		// A cluster that answers no one looks the same to the client as
		// one without a majority; tell a client that cannot reach any
		// member (TLS refused, wrong scheme) apart.
		if p := b.unreachable(); p != nil {
			return fmt.Errorf("state %s: %s: no member can be reached: %w", b.cfg, op, p)
		}
		return &QuorumError{Cluster: b.cfg.String(), Err: err}
	}
	return fmt.Errorf("state %s: %s: %w", b.cfg, op, err)
}

func (b *etcdBackend) view(ctx context.Context, fn func(txn) error) error {
	err := b.run(ctx, false, false, fn)
	if err != nil && quorumLost(err) && ctx.Err() == nil {
		// Without a majority a linearizable read cannot answer; the member
		// we reach still has the last state it saw, which beats nothing.
		err = b.run(ctx, false, true, fn)
	}
	return b.wrapErr("read", err)
}

func (b *etcdBackend) update(ctx context.Context, fn func(txn) error) error {
	return b.wrapErr("write", b.run(ctx, true, false, fn))
}

var errConflict = errors.New("etcd: transaction conflict")

func (b *etcdBackend) run(ctx context.Context, writable, serializable bool, fn func(txn) error) error {
	for attempt := 0; ; attempt++ {
		t := &etcdTxn{ctx: ctx, b: b, writable: writable, serializable: serializable, buckets: map[string]*etcdBucket{}}
		err := fn(t)
		if t.err != nil {
			return t.err // a read failed: what fn decided is worthless
		}
		if err != nil {
			return err
		}
		if !writable {
			return nil
		}
		err = t.commit()
		if !errors.Is(err, errConflict) {
			return err
		}
		if attempt == etcdMaxRetries {
			return fmt.Errorf("state %s: gave up after %d conflicting transactions", b.cfg, attempt+1)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 5 * time.Millisecond):
		}
	}
}

func (b *etcdBackend) lock(ctx context.Context, name string) (func(), error) {
	// A session per hold: its lease is what frees the lock when this
	// process dies, and closing it revokes the lease at once on release.
	sess, err := b.session(ctx, etcdLockTTL)
	if err != nil {
		return nil, b.wrapErr("lock "+name+": session", err)
	}
	m := concurrency.NewMutex(sess, b.cfg.Prefix+"/locks/"+name)
	b.roundTrips.Add(1)
	if err := m.Lock(ctx); err != nil {
		sess.Close()
		return nil, b.wrapErr("lock "+name, err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), etcdRequestTimeout)
		defer cancel()
		m.Unlock(ctx)
		sess.Close()
	}, nil
}

// tryLock takes the lock only if it is free; held reports whether it did.
func (b *etcdBackend) tryLock(ctx context.Context, name string, ttl int) (unlock func(), lost <-chan struct{}, held bool, err error) {
	sess, err := b.session(ctx, ttl)
	if err != nil {
		return nil, nil, false, b.wrapErr("lock "+name+": session", err)
	}
	m := concurrency.NewMutex(sess, b.cfg.Prefix+"/locks/"+name)
	b.roundTrips.Add(1)
	if err := m.TryLock(ctx); err != nil {
		sess.Close()
		if errors.Is(err, concurrency.ErrLocked) {
			return nil, nil, false, nil
		}
		return nil, nil, false, b.wrapErr("lock "+name, err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), etcdRequestTimeout)
		defer cancel()
		m.Unlock(ctx)
		sess.Close()
	}, sess.Done(), true, nil
}

// session grants a lease of ttl seconds and keeps it alive until Close. The
// session's context must outlive ctx (the lease lives as long as the hold),
// yet the grant must not wait forever on a cluster without quorum.
func (b *etcdBackend) session(ctx context.Context, ttl int) (*concurrency.Session, error) {
	b.roundTrips.Add(1)
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timedOut := atomic.Bool{}
	timer := time.AfterFunc(etcdRequestTimeout, func() { timedOut.Store(true); cancel() })
	stop := context.AfterFunc(ctx, cancel)
	sess, err := concurrency.NewSession(b.cli, concurrency.WithTTL(ttl), concurrency.WithContext(sctx))
	timer.Stop()
	stop()
	if err != nil {
		cancel()
		if timedOut.Load() {
			return nil, fmt.Errorf("lease grant: %w", context.DeadlineExceeded)
		}
		return nil, err
	}
	// The session's keep-alive ends on Close (which revokes the lease) or
	// when the lease is lost; its context goes with it.
	go func() { <-sess.Done(); cancel() }()
	return sess, nil
}

func (b *etcdBackend) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, etcdReadTimeout)
	defer cancel()
	b.roundTrips.Add(1)
	_, err := b.cli.Get(ctx, b.cfg.Prefix+"/meta/k/schema") // linearizable: needs a majority
	return b.wrapErr("ping", err)
}

func (b *etcdBackend) close() error { return b.cli.Close() }

// etcdTxn is one optimistic transaction: reads at one revision, writes
// buffered until commit.
type etcdTxn struct {
	ctx          context.Context
	b            *etcdBackend
	writable     bool
	serializable bool
	rev          int64 // the snapshot's revision, 0 before the first read
	buckets      map[string]*etcdBucket
	order        []string // buckets in the order first touched
	err          error
}

func (t *etcdTxn) Bucket(name []byte) bucket {
	if bk, ok := t.buckets[string(name)]; ok {
		return bk
	}
	bk := &etcdBucket{t: t, name: string(name), vals: map[string][]byte{}, dirty: map[string]bool{}, read: map[string]bool{}}
	t.buckets[bk.name] = bk
	t.order = append(t.order, bk.name)
	return bk
}

// fail records the first read error; what fn decides after it is worthless.
func (t *etcdTxn) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// get reads key (or, with prefix, every key under it) at the snapshot's
// revision, fixing that revision at the first read.
func (t *etcdTxn) get(key string, prefix bool) (*clientv3.GetResponse, error) {
	var opts []clientv3.OpOption
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	timeout := etcdRequestTimeout
	if t.serializable {
		opts = append(opts, clientv3.WithSerializable())
	} else if !t.writable {
		timeout = etcdReadTimeout
	}
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	t.b.roundTrips.Add(1)
	resp, err := t.b.cli.Get(ctx, key, opts...)
	if err != nil {
		return nil, err
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *etcdTxn) commit() error {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, name := range t.order {
		bk := t.buckets[name]
		// A transaction that listed the bucket conflicts with any write to
		// it (the bucket's rev key moves with each); one that read single
		// records only with writes to those records, so that passes
		// journaling their own entries, or storing their own clusters'
		// records, do not retry each other's transactions.
		if bk.loaded {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.b.revKey(name)), "<", t.rev+1))
		} else {
			for _, k := range slices.Sorted(mapsKeys(bk.read)) {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.b.recordKey(name, []byte(k))), "<", t.rev+1))
			}
			if bk.seqRead {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.b.seqKey(name)), "<", t.rev+1))
			}
		}
		if !bk.written {
			continue
		}
		for _, k := range slices.Sorted(mapsKeys(bk.dirty)) {
			if v, ok := bk.vals[k]; ok {
				ops = append(ops, clientv3.OpPut(t.b.recordKey(name, []byte(k)), string(v)))
			} else {
				ops = append(ops, clientv3.OpDelete(t.b.recordKey(name, []byte(k))))
			}
		}
		if bk.seqDirty {
			ops = append(ops, clientv3.OpPut(t.b.seqKey(name), string(binary.BigEndian.AppendUint64(nil, bk.seq))))
		}
		ops = append(ops, clientv3.OpPut(t.b.revKey(name), ""))
	}
	if len(ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(t.ctx, etcdRequestTimeout)
	defer cancel()
	t.b.roundTrips.Add(1)
	resp, err := t.b.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errConflict
	}
	return nil
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// etcdBucket is a bucket's records at the snapshot, with this transaction's
// writes laid over them. Records are read one by one as asked for; a listing
// (ForEach, Cursor) loads the whole bucket.
type etcdBucket struct {
	t    *etcdTxn
	name string
	// loaded: the whole bucket was read; keys is then the sorted view.
	loaded bool
	keys   []string
	// vals holds the records read or written (absent: deleted or not there);
	// read names those read one by one, found or not.
	vals     map[string][]byte
	read     map[string]bool
	dirty    map[string]bool
	written  bool
	seq      uint64
	seqRead  bool
	seqDirty bool
}

// load reads the whole bucket, keeping this transaction's writes over it.
func (bk *etcdBucket) load() {
	if bk.loaded || bk.t.err != nil {
		return
	}
	resp, err := bk.t.get(bk.t.b.bucketPrefix(bk.name), true)
	if err != nil {
		bk.t.fail(err)
		return
	}
	recPrefix := bk.t.b.bucketPrefix(bk.name) + "k/"
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case strings.HasPrefix(k, recPrefix):
			k = strings.TrimPrefix(k, recPrefix)
			seen[k] = true
			if !bk.dirty[k] {
				bk.vals[k] = kv.Value
			}
		case k == bk.t.b.seqKey(bk.name) && len(kv.Value) == 8:
			if !bk.seqDirty && !bk.seqRead {
				bk.seq = binary.BigEndian.Uint64(kv.Value)
			}
		}
	}
	bk.seqRead = true
	bk.keys = bk.keys[:0]
	for k := range bk.vals {
		if seen[k] || bk.dirty[k] {
			bk.keys = append(bk.keys, k)
		}
	}
	slices.Sort(bk.keys)
	bk.loaded = true
}

// lookup reads key once (unless the bucket is loaded or the key written).
func (bk *etcdBucket) lookup(k string) {
	if bk.loaded || bk.read[k] || bk.dirty[k] || bk.t.err != nil {
		return
	}
	resp, err := bk.t.get(bk.t.b.recordKey(bk.name, []byte(k)), false)
	if err != nil {
		bk.t.fail(err)
		return
	}
	bk.read[k] = true
	if len(resp.Kvs) == 1 {
		bk.vals[k] = resp.Kvs[0].Value
	}
}

// loadSeq reads the bucket's sequence once.
func (bk *etcdBucket) loadSeq() {
	if bk.seqRead || bk.seqDirty || bk.t.err != nil {
		return
	}
	resp, err := bk.t.get(bk.t.b.seqKey(bk.name), false)
	if err != nil {
		bk.t.fail(err)
		return
	}
	bk.seqRead = true
	if len(resp.Kvs) == 1 && len(resp.Kvs[0].Value) == 8 {
		bk.seq = binary.BigEndian.Uint64(resp.Kvs[0].Value)
	}
}

func (bk *etcdBucket) Get(key []byte) []byte {
	k := string(key)
	bk.lookup(k)
	v, ok := bk.vals[k]
	if !ok {
		return nil
	}
	return v
}

func (bk *etcdBucket) Put(key, value []byte) error {
	if !bk.t.writable {
		return ErrReadOnly
	}
	if len(key) == 0 {
		return errors.New("state: empty key")
	}
	k := string(key)
	if _, ok := bk.vals[k]; !ok && bk.loaded {
		i, _ := slices.BinarySearch(bk.keys, k)
		bk.keys = slices.Insert(bk.keys, i, k)
	}
	bk.vals[k] = slices.Clone(value)
	bk.dirty[k], bk.written = true, true
	return nil
}

func (bk *etcdBucket) Delete(key []byte) error {
	if !bk.t.writable {
		return ErrReadOnly
	}
	k := string(key)
	bk.lookup(k)
	if _, ok := bk.vals[k]; !ok {
		return nil
	}
	if bk.loaded {
		i, _ := slices.BinarySearch(bk.keys, k)
		bk.keys = slices.Delete(bk.keys, i, i+1)
	}
	delete(bk.vals, k)
	bk.dirty[k], bk.written = true, true
	return nil
}

func (bk *etcdBucket) ForEach(fn func(k, v []byte) error) error {
	bk.load()
	for _, k := range slices.Clone(bk.keys) {
		if err := fn([]byte(k), bk.vals[k]); err != nil {
			return err
		}
	}
	return nil
}

func (bk *etcdBucket) NextSequence() (uint64, error) {
	if !bk.t.writable {
		return 0, ErrReadOnly
	}
	bk.loadSeq()
	bk.seq++
	bk.seqDirty, bk.written = true, true
	return bk.seq, nil
}

func (bk *etcdBucket) Sequence() uint64 {
	bk.loadSeq()
	return bk.seq
}

func (bk *etcdBucket) SetSequence(v uint64) error {
	if !bk.t.writable {
		return ErrReadOnly
	}
	bk.seq = v
	bk.seqDirty, bk.written = true, true
	return nil
}

func (bk *etcdBucket) Cursor() cursor {
	bk.load()
	return &etcdCursor{bk: bk, i: -1}
}

type etcdCursor struct {
	bk *etcdBucket
	i  int
}

func (c *etcdCursor) at(i int) ([]byte, []byte) {
	c.i = i
	if i < 0 || i >= len(c.bk.keys) {
		return nil, nil
	}
	k := c.bk.keys[i]
	return []byte(k), c.bk.vals[k]
}

func (c *etcdCursor) First() ([]byte, []byte) { return c.at(0) }
func (c *etcdCursor) Last() ([]byte, []byte)  { return c.at(len(c.bk.keys) - 1) }
func (c *etcdCursor) Next() ([]byte, []byte)  { return c.at(c.i + 1) }
func (c *etcdCursor) Prev() ([]byte, []byte)  { return c.at(c.i - 1) }

// Delete removes the current record; the next Next lands on its successor,
// as with bbolt.
func (c *etcdCursor) Delete() error {
	if c.i < 0 || c.i >= len(c.bk.keys) {
		return errors.New("state: cursor is not on a record")
	}
	err := c.bk.Delete([]byte(c.bk.keys[c.i]))
	c.i--
	return err
}
