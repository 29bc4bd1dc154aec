package state

import (
	"encoding/json"
	"fmt"
)

// Journal kinds: an apply a person asked for (the CLI, or a client of the
// hub's API), and a run of the hub's reconcile loop. Each kind has its own
// retention, so that a loop that runs every minute cannot push a person's
// apply out of the journal.
const (
	KindApply     = "apply"
	KindReconcile = "reconcile"
)

// DefaultReconcileJournalLimit is how many reconcile runs the journal keeps:
// half a day at the default interval of a minute.
const DefaultReconcileJournalLimit = 720

// kindOf is an entry's kind; entries written before kinds existed are
// applies (nothing tells them apart).
func kindOf(rec ApplyRecord) string {
	if rec.Kind == KindReconcile {
		return KindReconcile
	}
	return KindApply
}

func (t *Tx) journalLimit(kind string) int {
	if kind == KindReconcile {
		return t.s.opts.ReconcileJournalLimit
	}
	return t.s.opts.JournalLimit
}

// trimJournal drops the oldest entries of kind beyond its limit; entries of
// the other kind are left alone.
func (t *Tx) trimJournal(kind string) error {
	c := t.tx.Bucket(bucketJournal).Cursor()
	var keys [][]byte
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var rec ApplyRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("state: decode journal entry %x: %w", k, err)
		}
		if kindOf(rec) == kind {
			keys = append(keys, append([]byte(nil), k...))
		}
	}
	b := t.tx.Bucket(bucketJournal)
	for len(keys) > t.journalLimit(kind) {
		if err := b.Delete(keys[0]); err != nil {
			return fmt.Errorf("state: journal trim: %w", err)
		}
		keys = keys[1:]
	}
	return nil
}

// Journal returns up to limit entries of kind ("" for both), newest first
// (limit <= 0: all).
func (t *Tx) Journal(limit int, kind string) ([]ApplyRecord, error) {
	var out []ApplyRecord
	c := t.tx.Bucket(bucketJournal).Cursor()
	for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
		var rec ApplyRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return nil, fmt.Errorf("state: decode journal entry %x: %w", k, err)
		}
		if kind == "" || kindOf(rec) == kind {
			out = append(out, rec)
		}
	}
	return out, nil
}
