package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server/state"
)

// TestTrustReaders: one credential per read cluster (the newest token of
// its reader account), with the clusters that hold it and its expiry; a
// state without a CA has no CA part. A token recorded again by a later
// apply keeps the time it was first recorded.
func TestTrustReaders(t *testing.T) {
	ctx := context.Background()
	h := newHub(t)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	toks := []struct {
		cluster, readBy string
		issued, expires time.Duration // after at; expires 0: never
	}{
		{"west", "east", 0, time.Hour},
		{"west", "east", 30 * time.Minute, time.Hour}, // the next apply, the same token
		{"east", "west", 0, 0},
		{"east", "west,north", time.Hour, 25 * time.Hour}, // north joined: a new token
		{"north", "west,east", 0, 48 * time.Hour},
	}
	err := h.Store.Update(ctx, func(tx *state.Tx) error {
		for _, tk := range toks {
			rt := state.ReaderToken{ReadBy: tk.readBy, IssuedAt: at.Add(tk.issued)}
			if tk.expires > 0 {
				rt.ExpiresAt = at.Add(tk.expires)
			}
			if err := tx.SetReaderToken(tk.cluster, rt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := h.Trust(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tr.CA != nil {
		t.Errorf("CA = %+v, want none before the first apply", tr.CA)
	}
	var got []string
	for _, r := range tr.Readers {
		got = append(got, fmt.Sprintf("%s held by %v from %s until %s", r.Cluster, r.HeldBy, r.IssuedAt.Format(time.TimeOnly), r.ExpiresAt.Format(time.RFC3339)))
	}
	want := []string{
		"east held by [north west] from 01:00:00 until 2026-11-02T01:00:00Z",
		"north held by [east west] from 00:00:00 until 2026-11-03T00:00:00Z",
		"west held by [east] from 00:00:00 until 2026-11-01T01:00:00Z",
	}
	if !slices.Equal(got, want) {
		t.Errorf("readers:\n got %q\nwant %q", got, want)
	}
}
