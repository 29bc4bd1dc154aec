package state

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
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

// ApplyRecord is one apply in the journal.
type ApplyRecord struct {
	ID    uint64    `json:"id"`
	Start time.Time `json:"start"`
	// End is zero while the apply runs, and stays zero if it was killed.
	End      time.Time `json:"end,omitzero"`
	SpecHash string    `json:"specHash"`
	// Kind is KindApply (a person's apply, from the CLI or the API) or
	// KindReconcile (the hub's loop); each kind has its own retention.
	Kind string `json:"kind,omitempty"`
	// Source says where an apply came from: cli, api, reconcile or
	// rotation; empty in entries written before it was recorded.
	Source string `json:"source,omitempty"`
	// Clusters are the member clusters a scoped reconcile pass covered (a
	// replica's share of the ring); empty for a pass over the whole mesh.
	Clusters []string `json:"clusters,omitempty"`
	// Result summarizes the apply (set by FinishApply), e.g. "succeeded".
	Result string       `json:"result,omitempty"`
	Steps  []StepRecord `json:"steps,omitempty"`
}

// StepRecord is one step of an apply.
type StepRecord struct {
	Cluster string    `json:"cluster,omitempty"`
	Step    string    `json:"step"`
	Result  string    `json:"result"`
	Error   string    `json:"error,omitempty"`
	Start   time.Time `json:"start,omitzero"`
	End     time.Time `json:"end,omitzero"`
}

func journalKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

// AppendApply adds rec to the journal with a new ID, which it returns, and
// drops the oldest entries of its kind beyond that kind's limit.
func (t *Tx) AppendApply(rec ApplyRecord) (uint64, error) {
	b := t.tx.Bucket(bucketJournal)
	id, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("state: journal: %w", err)
	}
	rec.ID = id
	if err := t.putJSON(bucketJournal, journalKey(id), rec); err != nil {
		return 0, err
	}
	if err := t.trimJournal(kindOf(rec)); err != nil {
		return 0, err
	}
	return id, nil
}

// ApplyRecord returns the journal entry id.
func (t *Tx) ApplyRecord(id uint64) (rec ApplyRecord, ok bool, err error) {
	ok, err = t.getJSON(bucketJournal, journalKey(id), &rec)
	return rec, ok, err
}

func (t *Tx) modifyApply(id uint64, fn func(*ApplyRecord)) error {
	rec, ok, err := t.ApplyRecord(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("state: journal entry %d: %w", id, ErrNotFound)
	}
	fn(&rec)
	return t.putJSON(bucketJournal, journalKey(id), rec)
}

// AddApplyStep appends a step to journal entry id.
func (t *Tx) AddApplyStep(id uint64, step StepRecord) error {
	return t.modifyApply(id, func(r *ApplyRecord) { r.Steps = append(r.Steps, step) })
}

// FinishApply records the end and result of journal entry id.
func (t *Tx) FinishApply(id uint64, end time.Time, result string) error {
	return t.modifyApply(id, func(r *ApplyRecord) { r.End, r.Result = end.UTC(), result })
}

// Applies returns up to limit journal entries, newest first (limit <= 0: all).
func (t *Tx) Applies(limit int) ([]ApplyRecord, error) { return t.Journal(limit, "") }
