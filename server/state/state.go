// Package state is the hub's memory: the mesh spec, the CA, per-cluster
// records, sealed secrets and the apply journal, in one bbolt file.
//
// One process writes at a time. A writer holds an exclusive lock on
// "<state>.lock" (which records its PID) for as long as it has the store open,
// and opens the bbolt file only while transactions are in flight. Readers
// (OpenReadOnly, for status) therefore never wait for a writer that is merely
// running, only for a transaction in progress, up to Options.Timeout.
//
// Secrets (private keys) are sealed with AES-256-GCM under a key that is never
// written to the state file; a sealed key-check value detects a wrong key.
package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Schema is the layout version this package writes; newer files are refused.
const Schema = 1

// DefaultJournalLimit is how many applies the journal keeps.
const DefaultJournalLimit = 200

// DefaultTimeout is how long an open waits for another process's transaction.
const DefaultTimeout = 2 * time.Second

// Options configure a store.
type Options struct {
	// Key seals and unseals secrets. Without it, a state that holds sealed
	// secrets does not open unless KeyOptional is set.
	Key *Key
	// KeyOptional opens a sealed state without its key (status needs no
	// secret); reading a secret then fails with ErrKeyRequired.
	KeyOptional bool
	// Timeout bounds the wait for another process's transaction in flight.
	Timeout time.Duration
	// JournalLimit is how many applies by a person the journal keeps (the
	// newest); ReconcileJournalLimit how many reconcile runs
	// (DefaultJournalLimit, DefaultReconcileJournalLimit when zero).
	JournalLimit, ReconcileJournalLimit int
}

// ErrWrongKey means the key given is not the one the state was sealed with.
var ErrWrongKey = errors.New("state key does not match the one this state was sealed with")

// ErrKeyRequired means the state holds sealed secrets and no key was given.
var ErrKeyRequired = fmt.Errorf("this state holds sealed secrets and no state key was given: name a key file, or set %s to the key (base64 of 32 bytes)", KeyEnv)

// ErrTampered means a sealed value does not open under the right key: it was
// modified or moved to another place in the state.
var ErrTampered = errors.New("sealed value was tampered with or moved")

// ErrReadOnly is returned by Update on a store opened with OpenReadOnly.
var ErrReadOnly = errors.New("state is open read-only")

// ErrClosed is returned when a closed store is used.
var ErrClosed = errors.New("state is closed")

// InUseError means another process holds the state.
type InUseError struct {
	Path string
	// PID is the holder's process ID, 0 when it could not be learned.
	PID int
}

func (e *InUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("state %s is in use by another process", e.Path)
	}
	return fmt.Sprintf("state %s is in use by PID %d", e.Path, e.PID)
}

// Store is an open state file.
type Store struct {
	path     string
	opts     Options
	readOnly bool
	lock     *os.File // the writer lock; nil when read-only
	sealer   *sealer  // nil without a key
	be       backend
	// locks are the named locks of this process (bbolt), by name, under
	// mu: Lock waits on one, TryFence takes it only if it is free, so an
	// apply and a reconcile fence of the same name exclude each other.
	locks     map[string]chan struct{}
	lockWait  atomic.Int64 // nanoseconds spent in Lock
	lockWaits atomic.Uint64

	mu     sync.Mutex
	db     *bolt.DB
	users  int
	closed bool
}

// Open opens the state at path for writing, creating it (mode 0600, parent
// directory 0700) if needed. It fails at once with an *InUseError when another
// process has it open for writing.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	return open(ctx, path, opts, false)
}

// OpenReadOnly opens an existing state for reading. It does not wait for a
// writer that has the state open, only for a transaction in flight.
func OpenReadOnly(ctx context.Context, path string, opts Options) (*Store, error) {
	return open(ctx, path, opts, true)
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.JournalLimit <= 0 {
		o.JournalLimit = DefaultJournalLimit
	}
	if o.ReconcileJournalLimit <= 0 {
		o.ReconcileJournalLimit = DefaultReconcileJournalLimit
	}
	return o
}

func open(ctx context.Context, path string, opts Options, readOnly bool) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Both backends keep the same defaults: the etcd store once lacked
	// the reconcile limit and trimmed every reconcile entry as written.
	opts = opts.withDefaults()
	if IsEtcd(path) {
		return openEtcdStore(ctx, path, opts, readOnly)
	}
	s := &Store{path: path, opts: opts, readOnly: readOnly}
	s.be = boltBackend{s}
	if opts.Key != nil {
		sl, err := newSealer(opts.Key)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		s.sealer = sl
	}
	if readOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
	} else {
		if err := ensureDir(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		lock, err := lockWriter(path)
		if err != nil {
			return nil, err
		}
		s.lock = lock
	}
	if err := s.init(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// init creates the file and buckets, enforces the mode, and checks schema and key.
func (s *Store) init(ctx context.Context) error {
	if fi, err := os.Stat(s.path); err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("state %s is not a regular file", s.path)
		}
		if fi.Mode().Perm() != 0o600 {
			// The file holds tokens and the spec in the clear; only its
			// owner may read it, whatever created it.
			if err := os.Chmod(s.path, 0o600); err != nil {
				return fmt.Errorf("state %s has mode %04o and cannot be made 0600: %w", s.path, fi.Mode().Perm(), err)
			}
		}
	}
	check := func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySchema); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil || n > Schema {
				return fmt.Errorf("state %s has schema %q; this flotilla understands up to %d", s.path, v, Schema)
			}
		}
		kc := meta.Get(keyKeyCheck)
		switch {
		case kc == nil:
		case s.sealer == nil && !s.opts.KeyOptional:
			return fmt.Errorf("state %s: %w", s.path, ErrKeyRequired)
		case s.sealer != nil:
			plain, err := s.sealer.open(string(bucketMeta), string(keyKeyCheck), kc)
			if err != nil || !bytes.Equal(plain, keyCheckPlain) {
				return fmt.Errorf("state %s: %w", s.path, ErrWrongKey)
			}
		}
		return nil
	}
	if s.readOnly {
		return s.view(ctx, func(tx *bolt.Tx) error {
			if tx.Bucket(bucketMeta) == nil {
				return fmt.Errorf("state %s is not a flotilla state (no meta bucket)", s.path)
			}
			return check(tx)
		})
	}
	// A state that has every bucket and its schema is only checked: an open
	// that writes nothing leaves the file byte for byte as it was, so that
	// a command refused on bad input changes nothing.
	complete := false
	err := s.view(ctx, func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return nil
			}
		}
		if tx.Bucket(bucketMeta).Get(keySchema) == nil {
			return nil
		}
		complete = true
		return check(tx)
	})
	if err != nil || complete {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("state %s: create bucket %s: %w", s.path, b, err)
			}
		}
		if err := check(tx); err != nil {
			return err
		}
		if tx.Bucket(bucketMeta).Get(keySchema) == nil {
			return tx.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(Schema)))
		}
		return nil
	})
}

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

// ReadOnly reports whether the store was opened with OpenReadOnly.
func (s *Store) ReadOnly() bool { return s.readOnly }

// HasKey reports whether the store can seal and unseal secrets.
func (s *Store) HasKey() bool { return s.sealer != nil }

// Close releases the state. Transactions in flight finish first.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.db != nil {
		errs = append(errs, s.db.Close())
		s.db = nil
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close()) // closing drops the flock
		s.lock = nil
	}
	errs = append(errs, s.be.close())
	return errors.Join(errs...)
}

// View runs fn in a read transaction.
func (s *Store) View(ctx context.Context, fn func(*Tx) error) error {
	return s.be.view(ctx, func(t txn) error { return fn(s.wrap(t)) })
}

// Update runs fn in a read-write transaction: everything fn writes is
// committed together, or (fn returns an error, or the process dies) nothing is.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	if s.readOnly {
		return ErrReadOnly
	}
	return s.be.update(ctx, func(t txn) error { return fn(s.wrap(t)) })
}

// Lock takes the lock called name, shared by every process that uses this
// state (an etcd lock bound to a lease on etcd, so that a holder that dies
// frees it), and returns its release. An apply holds "apply".
func (s *Store) Lock(ctx context.Context, name string) (unlock func(), err error) {
	if s.readOnly {
		return nil, ErrReadOnly
	}
	start := time.Now()
	defer func() {
		s.lockWait.Add(int64(time.Since(start)))
		s.lockWaits.Add(1)
	}()
	return s.be.lock(ctx, name)
}

// LockWait is the time spent waiting in Lock so far; LockWaits counts the calls.
func (s *Store) LockWait() time.Duration { return time.Duration(s.lockWait.Load()) }

// LockWaits counts the calls to Lock.
func (s *Store) LockWaits() uint64 { return s.lockWaits.Load() }

func (s *Store) wrap(t txn) *Tx { return &Tx{tx: t, s: s} }

func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	db, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer s.release()
	return db.View(fn)
}

func (s *Store) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	db, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer s.release()
	return db.Update(fn)
}

// acquire opens the bbolt file for the duration of one or more concurrent
// transactions; release closes it when the last one ends, so that readers in
// other processes get their turn.
func (s *Store) acquire(ctx context.Context) (*bolt.DB, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.db == nil {
		timeout := s.opts.Timeout
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
			timeout = max(time.Until(dl), time.Millisecond)
		}
		db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: s.readOnly})
		if err != nil {
			switch {
			case errors.Is(err, bolt.ErrTimeout) && s.readOnly:
				return nil, &InUseError{Path: s.path, PID: holderPID(s.path)}
			case errors.Is(err, bolt.ErrTimeout):
				// We hold the writer lock: only a reader can be in the way.
				return nil, fmt.Errorf("state %s: another process kept reading it for more than %s", s.path, timeout)
			}
			return nil, fmt.Errorf("state %s: %w", s.path, err)
		}
		s.db = db
	}
	s.users++
	return s.db, nil
}

func (s *Store) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users--
	if s.users == 0 && s.db != nil {
		s.db.Close()
		s.db = nil
	}
}

func ensureDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.MkdirAll(dir, 0o700)
}

// lockWriter takes the exclusive writer lock on path+".lock" without
// waiting, and records this process's PID in it. A crashed holder's flock
// is gone with its process, so its stale PID is overwritten by the next
// holder; a contender reads the PID only while the lock is held.
func lockWriter(path string) (*os.File, error) {
	lockPath := path + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state %s: lock: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &InUseError{Path: path, PID: holderPID(path)}
		}
		return nil, fmt.Errorf("state %s: lock %s: %w", path, lockPath, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("state %s: lock: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("state %s: lock: record pid: %w", path, err)
	}
	return f, nil
}

// holderPID reads the writer's PID from the lock file. The holder writes it
// just after taking the lock, so a record that names no live process is
// re-read for a moment before giving up (0).
func holderPID(path string) int {
	for range 50 {
		data, err := os.ReadFile(path + ".lock")
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 && alive(pid) {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
