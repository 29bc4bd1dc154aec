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
