package state

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestJournalKindsKeepTheirOwn: reconcile runs past their limit push out
// older reconcile runs only; a person's apply stays, and Journal lists each
// kind apart, newest first.
func TestJournalKindsKeepTheirOwn(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{JournalLimit: 3, ReconcileJournalLimit: 4})
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(kind, source string) {
		t.Helper()
		err := s.Update(ctx, func(tx *Tx) error {
			_, err := tx.AppendApply(ApplyRecord{Start: start, Kind: kind, Source: source})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	add(KindApply, "cli") // 1: a person's apply
	add("", "")           // 2: an entry from before kinds: an apply
	for range 50 {        // 3..52: the loop, for most of an hour
		add(KindReconcile, "reconcile")
	}
	add(KindApply, "api") // 53
	ids := func(kind string) string {
		var out []uint64
		s.View(ctx, func(tx *Tx) error {
			recs, err := tx.Journal(0, kind)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				out = append(out, r.ID)
			}
			return nil
		})
		return fmt.Sprint(out)
	}
	cases := []struct{ kind, want string }{
		{KindApply, "[53 2 1]"},
		{KindReconcile, "[52 51 50 49]"},
		{"", "[53 52 51 50 49 2 1]"},
	}
	for _, tc := range cases {
		if got := ids(tc.kind); got != tc.want {
			t.Errorf("Journal(%q): %s, want %s", tc.kind, got, tc.want)
		}
	}
	add(KindApply, "cli") // 54: the oldest apply (1) goes, no reconcile run does
	if got := ids(KindApply); got != "[54 53 2]" {
		t.Errorf("applies after a fourth: %s, want [54 53 2]", got)
	}
	if got := ids(KindReconcile); got != "[52 51 50 49]" {
		t.Errorf("reconcile runs after an apply: %s", got)
	}
}
