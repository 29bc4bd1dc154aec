package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Snapshot is what the pages show, as the API reported it: each part is the
// API's own JSON, or an error saying why it is missing.
type Snapshot struct {
	// Version counts the refreshes; the page ignores one older than it has.
	Version   uint64    `json:"version"`
	FetchedAt time.Time `json:"fetchedAt"`
	// RefreshSeconds is how often the hub refreshes while someone watches.
	RefreshSeconds float64 `json:"refreshSeconds"`
	Status         Part    `json:"status"` // GET /api/v1/status
	Trust          Part    `json:"trust"`  // GET /api/v1/trust
	// Journal is GET /api/v1/journal?limit=0 with only the steps that
	// changed something or failed (see brief).
	Journal  Part      `json:"journal"`
	Checks   Part      `json:"checks"` // GET /api/v1/check
	ChecksAt time.Time `json:"checksAt,omitzero"`
}

// Part is one API answer.
type Part struct {
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
}

// feed keeps the latest snapshot and hands it to the event streams. It
// refreshes in the background only while a stream is open, so a hub nobody
// looks at does no extra work.
type feed struct {
	d *Dashboard

	mu      sync.Mutex
	snap    []byte // the latest Snapshot, as JSON
	version uint64
	last    Snapshot
	subs    map[chan struct{}]struct{}
	running bool
	// recheck asks the running loop for checks now.
	recheck chan chan struct{}
	// refreshing serializes refreshes (the loop and a direct request).
	refreshing sync.Mutex
}

func newFeed(d *Dashboard) *feed {
	return &feed{d: d, subs: map[chan struct{}]struct{}{}, recheck: make(chan chan struct{})}
}

// subscribe returns a channel that receives a tick after every refresh,
// and starts the background refresh if it is not running.
func (f *feed) subscribe() chan struct{} {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs[ch] = struct{}{}
	if !f.running {
		f.running = true
		go f.loop()
	}
	return ch
}

func (f *feed) unsubscribe(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, ch)
}

// loop refreshes every Refresh while anyone subscribes, until the dashboard
// closes.
func (f *feed) loop() {
	ctx, cancel := f.d.contextUntilClosed(context.Background())
	defer cancel()
	f.refresh(ctx, true)
	for n := 1; ; n++ {
		t := time.NewTimer(f.d.opts.Refresh)
		select {
		case <-ctx.Done():
			t.Stop()
			f.stop()
			return
		case <-t.C:
			f.refresh(ctx, n%checkEvery == 0)
		case ack := <-f.recheck:
			t.Stop()
			f.refresh(ctx, true)
			close(ack)
			n = 0
		}
		f.mu.Lock()
		if len(f.subs) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
	}
}

func (f *feed) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = false
}

// current returns the latest snapshot, refreshing first if there is none.
func (f *feed) current(ctx context.Context) []byte {
	f.mu.Lock()
	snap := f.snap
	f.mu.Unlock()
	if snap == nil {
		f.refresh(ctx, true)
		f.mu.Lock()
		snap = f.snap
		f.mu.Unlock()
	}
	return snap
}

// rerunChecks refreshes with checks now: through the loop when it runs (so
// that refreshes never overlap), else directly.
func (f *feed) rerunChecks(ctx context.Context) {
	ack := make(chan struct{})
	select {
	case f.recheck <- ack:
		select {
		case <-ack:
		case <-ctx.Done():
		}
	case <-time.After(100 * time.Millisecond):
		f.refresh(ctx, true) // no loop listening
	case <-ctx.Done():
	}
}

// refresh reads the API once and publishes a new snapshot.
func (f *feed) refresh(ctx context.Context, withChecks bool) {
	f.refreshing.Lock()
	defer f.refreshing.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	f.mu.Lock()
	s := f.last
	f.mu.Unlock()
	var wg sync.WaitGroup
	get := func(p *Part, path string) {
		defer wg.Done()
		*p = f.call(ctx, path)
	}
	wg.Add(3)
	go get(&s.Status, "/api/v1/status")
	go get(&s.Trust, "/api/v1/trust")
	go get(&s.Journal, "/api/v1/journal?limit=0")
	if withChecks {
		wg.Add(1)
		go get(&s.Checks, "/api/v1/check")
	}
	wg.Wait()
	s.Journal = brief(s.Journal)
	now := f.d.opts.Now().UTC()
	if withChecks {
		s.ChecksAt = now
	}
	s.FetchedAt = now
	s.RefreshSeconds = f.d.opts.Refresh.Seconds()
	f.mu.Lock()
	defer f.mu.Unlock()
	if ctx.Err() != nil && f.snap != nil {
		return // shutting down: keep what the pages have
	}
	f.version++
	s.Version = f.version
	raw, err := json.Marshal(s)
	if err != nil {
		f.d.opts.Log.Error("dashboard: encode snapshot", "error", err.Error())
		return
	}
	f.last, f.snap = s, raw
	for ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default: // the stream has a tick pending already
		}
	}
}

// call serves a GET of path by the API handler, in memory.
func (f *feed) call(ctx context.Context, path string) Part {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	if err != nil {
		return Part{Error: err.Error()}
	}
	rec := &memoryResponse{header: http.Header{}, code: http.StatusOK}
	f.d.opts.API.ServeHTTP(rec, req)
	if rec.code != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(rec.body.Bytes(), &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s: HTTP %d", path, rec.code)
		}
		return Part{Error: e.Error}
	}
	// Compact: an event's data must be one line.
	var b bytes.Buffer
	if err := json.Compact(&b, rec.body.Bytes()); err != nil {
		return Part{Error: fmt.Sprintf("%s: %v", path, err)}
	}
	return Part{Data: b.Bytes()}
}

// changedNothing: the step results ApplyReport.Changes does not count.
func changedNothing(result string) bool {
	switch result {
	case "unchanged", "skipped", "none", "validated", "":
		return true
	}
	return false
}

// brief keeps, of each journal entry, the steps that changed something or
// failed, and their total in stepCount: with many clusters an apply has
// hundreds of steps, and most reconciles change nothing, so the whole
// journal would be megabytes in every event.
func brief(p Part) Part {
	if p.Error != "" {
		return p
	}
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(p.Data, &entries); err != nil {
		return Part{Error: fmt.Sprintf("journal: %v", err)}
	}
	for _, e := range entries {
		var steps []map[string]json.RawMessage
		if raw, ok := e["steps"]; ok {
			if err := json.Unmarshal(raw, &steps); err != nil {
				return Part{Error: fmt.Sprintf("journal: steps: %v", err)}
			}
		}
		kept := []map[string]json.RawMessage{}
		for _, st := range steps {
			var result string
			_ = json.Unmarshal(st["result"], &result) // absent: ""
			if !changedNothing(result) {
				kept = append(kept, st)
			}
		}
		e["steps"], _ = json.Marshal(kept)
		e["stepCount"], _ = json.Marshal(len(steps))
	}
	data, err := json.Marshal(entries)
	if err != nil {
		return Part{Error: fmt.Sprintf("journal: %v", err)}
	}
	return Part{Data: data}
}

// memoryResponse records a response in memory.
type memoryResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (m *memoryResponse) Header() http.Header         { return m.header }
func (m *memoryResponse) Write(p []byte) (int, error) { return m.body.Write(p) }
func (m *memoryResponse) WriteHeader(code int)        { m.code = code }

func (d *Dashboard) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(d.feed.current(r.Context()))
}

func (d *Dashboard) handleRecheck(w http.ResponseWriter, r *http.Request) {
	d.feed.rerunChecks(r.Context())
	d.handleSnapshot(w, r)
}

// handleEvents streams a snapshot event after every refresh. The write
// deadline is pushed on at each write, so that a server-wide write timeout
// does not cut a stream that is alive.
func (d *Dashboard) handleEvents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.contextUntilClosed(r.Context())
	defer cancel()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	ch := d.feed.subscribe()
	defer d.feed.unsubscribe(ch)
	send := func(event string, data []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(time.Minute)) // unsupported: no deadline to push
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// The loop that subscribe started sends the first snapshot when there
	// is none yet.
	d.feed.mu.Lock()
	snap := d.feed.snap
	d.feed.mu.Unlock()
	if snap != nil && !send("snapshot", snap) {
		return
	}
	ping := time.NewTicker(20 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			d.feed.mu.Lock()
			snap = d.feed.snap
			d.feed.mu.Unlock()
			if !send("snapshot", snap) {
				return
			}
		case <-ping.C:
			if !send("ping", []byte("{}")) {
				return
			}
		}
	}
}
