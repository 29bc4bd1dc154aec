package state

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestLockExcludes: a second Lock waits for the first holder's release, and
// gives up with its context.
func TestLockExcludes(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{})
	ctx := context.Background()
	unlock, err := s.Lock(ctx, "apply")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(short, "apply"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock while held: got %v, want a deadline error", err)
	}
	unlock()
	unlock2, err := s.Lock(ctx, "apply")
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	unlock2()
}

// TestLocalLocksByName: on bbolt, locks of different names are independent,
// and a Lock and a TryFence of one name exclude each other (a user's apply
// waits for a cluster's reconcile fence, and a reconcile skips a cluster an
// apply holds).
func TestLocalLocksByName(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{})
	ctx := context.Background()
	f, ok, err := s.TryFence(ctx, "reconcile/east", 10)
	if err != nil || !ok {
		t.Fatalf("TryFence on a free name: ok=%v err=%v", ok, err)
	}
	unlockWest, err := s.Lock(ctx, "reconcile/west")
	if err != nil {
		t.Fatalf("Lock of another name while east's fence is held: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(short, "reconcile/east"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a fenced name: got %v, want a deadline error", err)
	}
	if _, ok, _ := s.TryFence(ctx, "reconcile/west", 10); ok {
		t.Fatal("TryFence took a name that Lock holds")
	}
	f.Release()
	f.Release() // a second release is a no-op, not a second unlock
	unlockEast, err := s.Lock(ctx, "reconcile/east")
	if err != nil {
		t.Fatalf("Lock after the fence's release: %v", err)
	}
	if _, ok, _ := s.TryFence(ctx, "reconcile/east", 10); ok {
		t.Fatal("TryFence took a name that Lock holds after a double release")
	}
	unlockEast()
	unlockWest()
}
