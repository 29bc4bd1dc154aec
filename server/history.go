package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/flotillamesh/flotilla/server/state"
)

// Historian reads the journal: a Hub on the local state, or a Client of a
// running hub.
type Historian interface {
	History(ctx context.Context, limit int, kind string) ([]state.ApplyRecord, error)
}

var (
	_ Historian = (*Hub)(nil)
	_ Historian = (*Client)(nil)
)

// ParseJournalKind checks a journal kind: state.KindApply,
// state.KindReconcile, or "" / "all" for both.
func ParseJournalKind(v string) (string, error) {
	switch v {
	case "", "all":
		return "", nil
	case state.KindApply, state.KindReconcile:
		return v, nil
	}
	return "", fmt.Errorf("kind=%q: want apply, reconcile or all", v)
}

// History returns up to limit journal entries of kind ("" for both), newest
// first (limit <= 0: all).
func (h *Hub) History(ctx context.Context, limit int, kind string) ([]state.ApplyRecord, error) {
	var out []state.ApplyRecord
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		var err error
		out, err = tx.Journal(limit, kind)
		return err
	})
	return out, err
}

// History asks the hub for its journal entries of kind ("" for both).
func (c *Client) History(ctx context.Context, limit int, kind string) ([]state.ApplyRecord, error) {
	var out []state.ApplyRecord
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if kind != "" {
		q.Set("kind", kind)
	}
	if err := c.do(ctx, http.MethodGet, "/api/v1/journal", q, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// journalKind is the source an apply's journal entry is of.
func journalKind(source string) string {
	if source == "reconcile" {
		return state.KindReconcile
	}
	return state.KindApply
}
