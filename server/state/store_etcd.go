package state

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
)

// openEtcdStore opens the state kept in the etcd cluster a URL names. Unlike
// the bbolt file there is no writer lock: replicas share the state, each
// transaction is guarded by revisions, and an apply holds Lock("apply").
func openEtcdStore(ctx context.Context, raw string, opts Options, readOnly bool) (*Store, error) {
	cfg, err := ParseEtcdURL(raw)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	s := &Store{path: cfg.String(), opts: opts, readOnly: readOnly}
	if opts.Key != nil {
		sl, err := newSealer(opts.Key)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", s.path, err)
		}
		s.sealer = sl
	}
	be, err := openEtcd(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.be = be
	if err := s.initEtcd(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// initEtcd checks schema and key as the bbolt init does, and records the
// schema in a new state. Buckets need no creating in etcd.
func (s *Store) initEtcd(ctx context.Context) error {
	check := func(t txn) (fresh bool, err error) {
		meta := t.Bucket(bucketMeta)
		v := meta.Get(keySchema)
		if v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil || n > Schema {
				return false, fmt.Errorf("state %s has schema %q; this flotilla understands up to %d", s.path, v, Schema)
			}
		}
		kc := meta.Get(keyKeyCheck)
		switch {
		case kc == nil:
		case s.sealer == nil && !s.opts.KeyOptional:
			return false, fmt.Errorf("state %s: %w", s.path, ErrKeyRequired)
		case s.sealer != nil:
			plain, err := s.sealer.open(string(bucketMeta), string(keyKeyCheck), kc)
			if err != nil || !bytes.Equal(plain, keyCheckPlain) {
				return false, fmt.Errorf("state %s: %w", s.path, ErrWrongKey)
			}
		}
		return v == nil, nil
	}
	var fresh bool
	err := s.be.view(ctx, func(t txn) (err error) {
		fresh, err = check(t)
		return err
	})
	if err != nil || !fresh {
		return err
	}
	if s.readOnly {
		return fmt.Errorf("state %s is not a flotilla state (no schema under its prefix)", s.path)
	}
	return s.be.update(ctx, func(t txn) error {
		if _, err := check(t); err != nil {
			return err
		}
		if t.Bucket(bucketMeta).Get(keySchema) == nil {
			return t.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(Schema)))
		}
		return nil
	})
}

// Backend names where the state lives: "bbolt" or "etcd".
func (s *Store) Backend() string {
	if _, ok := s.be.(*etcdBackend); ok {
		return "etcd"
	}
	return "bbolt"
}

// Ping checks that the state can be written: for etcd, that a majority of
// its members answer. A bbolt state is always there.
func (s *Store) Ping(ctx context.Context) error {
	if e, ok := s.be.(*etcdBackend); ok {
		return e.ping(ctx)
	}
	return nil
}

// RoundTrips counts the requests this store has sent to etcd (0 on bbolt).
func (s *Store) RoundTrips() uint64 {
	if e, ok := s.be.(*etcdBackend); ok {
		return e.roundTrips.Load()
	}
	return 0
}

// Fence is a lock that is held until it is released or lost: Lost closes
// when etcd no longer vouches for it (its lease expired, say after a
// partition), and work done under it must stop.
type Fence struct {
	Release func()
	Lost    <-chan struct{}
}

// TryFence takes the lock called name if nobody holds it; ok is false when
// someone does. On etcd the lock is bound to a lease of ttlSeconds, so a
// holder that dies or is cut off from etcd loses it; on bbolt (one process)
// it is the in-process lock of that name.
func (s *Store) TryFence(ctx context.Context, name string, ttlSeconds int) (f Fence, ok bool, err error) {
	if s.readOnly {
		return Fence{}, false, ErrReadOnly
	}
	if e, isEtcd := s.be.(*etcdBackend); isEtcd {
		release, lost, held, err := e.tryLock(ctx, name, ttlSeconds)
		return Fence{Release: release, Lost: lost}, held, err
	}
	return s.tryLocalFence(name)
}
