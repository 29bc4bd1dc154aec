package state

import (
	"context"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// backend is where a Store's buckets live: the bbolt file (the default) or
// an etcd cluster. Records, sealing and the journal are written once, on Tx,
// against txn; a backend only has to give transactions the shape of bbolt's.
type backend interface {
	// view runs fn on a consistent snapshot.
	view(ctx context.Context, fn func(txn) error) error
	// update runs fn and commits everything it wrote together, or nothing.
	update(ctx context.Context, fn func(txn) error) error
	// lock takes the named lock that serialises long operations (an apply)
	// across every process that shares the state.
	lock(ctx context.Context, name string) (unlock func(), err error)
	close() error
}

// txn is a transaction seen as buckets, as bbolt has them.
type txn interface {
	Bucket(name []byte) bucket
}

// bucket is the subset of *bolt.Bucket the records use.
type bucket interface {
	Get(key []byte) []byte
	Put(key, value []byte) error
	Delete(key []byte) error
	ForEach(fn func(k, v []byte) error) error
	Cursor() cursor
	NextSequence() (uint64, error)
	Sequence() uint64
	SetSequence(v uint64) error
}

// cursor is the subset of *bolt.Cursor the records use.
type cursor interface {
	First() (key, value []byte)
	Last() (key, value []byte)
	Next() (key, value []byte)
	Prev() (key, value []byte)
	Delete() error
}

type boltTxn struct{ tx *bolt.Tx }

func (t boltTxn) Bucket(name []byte) bucket { return boltBucket{t.tx.Bucket(name)} }

type boltBucket struct{ *bolt.Bucket }

func (b boltBucket) Cursor() cursor { return b.Bucket.Cursor() }

// boltBackend is the Store's own bbolt file. Its writer lock (the flock on
// "<state>.lock") already keeps other processes out, so the named locks
// need only exclude goroutines of this process.
type boltBackend struct{ s *Store }

func (b boltBackend) view(ctx context.Context, fn func(txn) error) error {
	return b.s.view(ctx, func(tx *bolt.Tx) error { return fn(boltTxn{tx}) })
}

func (b boltBackend) update(ctx context.Context, fn func(txn) error) error {
	return b.s.update(ctx, func(tx *bolt.Tx) error { return fn(boltTxn{tx}) })
}

func (b boltBackend) lock(ctx context.Context, name string) (func(), error) {
	ch := b.s.localLock(name)
	select {
	case ch <- struct{}{}:
		return sync.OnceFunc(func() { <-ch }), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b boltBackend) close() error { return nil }

// localLock is the in-process lock called name, made on first use.
func (s *Store) localLock(name string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = map[string]chan struct{}{}
	}
	ch, ok := s.locks[name]
	if !ok {
		ch = make(chan struct{}, 1)
		s.locks[name] = ch
	}
	return ch
}

// tryLocalFence is TryFence on bbolt: the named in-process lock if it is
// free, never lost.
func (s *Store) tryLocalFence(name string) (Fence, bool, error) {
	ch := s.localLock(name)
	select {
	case ch <- struct{}{}:
		return Fence{Release: sync.OnceFunc(func() { <-ch }), Lost: make(chan struct{})}, true, nil
	default:
		return Fence{}, false, nil
	}
}
