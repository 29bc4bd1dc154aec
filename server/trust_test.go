package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server/state"
)

// TestTrustReaders: reader credentials come back by read cluster, then
// reader, with their expiry; a state without a CA has no CA part.
func TestTrustReaders(t *testing.T) {
	ctx := context.Background()
	h := newHub(t)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	toks := []struct {
		cluster, readBy string
		ttl             time.Duration
	}{
		{"west", "east", time.Hour},
		{"east", "west", 0},
		{"east", "north", 24 * time.Hour},
	}
	err := h.Store.Update(ctx, func(tx *state.Tx) error {
		for _, tk := range toks {
			rt := state.ReaderToken{ReadBy: tk.readBy, IssuedAt: at}
			if tk.ttl > 0 {
				rt.ExpiresAt = at.Add(tk.ttl)
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
		got = append(got, r.Cluster+"<-"+r.ReadBy+" "+r.ExpiresAt.Format(time.RFC3339))
	}
	want := []string{"east<-north 2026-11-02T00:00:00Z", "east<-west 0001-01-01T00:00:00Z", "west<-east 2026-11-01T01:00:00Z"}
	if !slices.Equal(got, want) {
		t.Errorf("readers:\n got %q\nwant %q", got, want)
	}
}
