package server

// The API's handlers: each reads its request, calls the hub, and writes
// JSON or an error whose status says whose fault it is.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// requestContext is r's context, also cancelled when the grace period of a
// shutdown is over.
func (s *Server) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.work, cancel)
	return ctx, func() { stop(); cancel() }
}

// meshCall serves a read of the mesh: the request's spec (none: the stored
// one), call's answer as JSON, or its error with the status it calls for.
func meshCall[T any](s *Server, call func(context.Context, *spec.Mesh) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, m, ok := readMeshRequest(s, w, r, func(*http.Request) (struct{}, error) { return struct{}{}, nil })
		if !ok {
			return
		}
		ctx, cancel := s.requestContext(r)
		defer cancel()
		out, err := call(ctx, m)
		if err != nil {
			writeError(w, errorStatus(err), err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) handleStatus() http.HandlerFunc {
	return meshCall(s, func(ctx context.Context, m *spec.Mesh) (*Status, error) {
		st, err := s.hub.Status(ctx, m)
		if st != nil && s.opts.Ring != nil {
			var names []string
			for _, c := range st.Clusters {
				names = append(names, c.Name)
			}
			owners := map[string]string{}
			for mb, cs := range ring.Assign(names, s.opts.Ring.Live()) {
				for _, c := range cs {
					owners[c] = mb
				}
			}
			for i := range st.Clusters {
				st.Clusters[i].Owner = owners[st.Clusters[i].Name]
			}
		}
		return st, err
	})
}

func (s *Server) handleCheck() http.HandlerFunc {
	return meshCall(s, func(ctx context.Context, m *spec.Mesh) ([]Check, error) {
		checks, err := s.hub.Check(ctx, m)
		if checks == nil && err == nil {
			checks = []Check{} // [] rather than null
		}
		return checks, err
	})
}

// readMeshRequest reads a request's options (parse) and its admitted spec;
// when either is bad it answers 400 itself and ok is false.
func readMeshRequest[O any](s *Server, w http.ResponseWriter, r *http.Request, parse func(*http.Request) (O, error)) (o O, m *spec.Mesh, ok bool) {
	o, err := parse(r)
	if err == nil {
		m, err = s.readAdmittedSpec(w, r)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return o, nil, false
	}
	return o, m, true
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	o, m, ok := readMeshRequest(s, w, r, verifyOptions)
	if !ok {
		return
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	select {
	case s.verifying <- struct{}{}:
		defer func() { <-s.verifying }()
	case <-ctx.Done():
		writeError(w, errorStatus(ctx.Err()), ctx.Err())
		return
	}
	res, err := s.hub.Verify(ctx, m, o)
	if err != nil {
		writeError(w, errorStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func verifyOptions(r *http.Request) (VerifyOptions, error) {
	var o VerifyOptions
	q := r.URL.Query()
	if v := q.Get("requests"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return o, fmt.Errorf("requests %q: %w", v, err)
		}
		o.Requests = n
	}
	if v := q.Get("keep"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("keep %q: %w", v, err)
		}
		o.Keep = b
	}
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return o, fmt.Errorf("timeout %q: %w", v, err)
		}
		o.Timeout = d
	}
	if v := q.Get("localService"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("localService %q: %w", v, err)
		}
		o.LocalService = b
	}
	return o, o.Validate()
}

func (s *Server) handleApply(plan bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		o, m, ok := readMeshRequest(s, w, r, func(r *http.Request) (ApplyOptions, error) { return applyOptions(r, plan) })
		if !ok {
			return
		}
		// An apply once started runs to its end even if the caller goes
		// away (only a shutdown cuts it short); waiting for its turn does not.
		rep, err := s.apply(r.Context(), m, o, "api")
		if err != nil {
			writeError(w, errorStatus(err), err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	}
}

func applyOptions(r *http.Request, plan bool) (ApplyOptions, error) {
	o := ApplyOptions{DryRun: plan}
	q := r.URL.Query()
	if v := q.Get("dryRun"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("dryRun=%q: want true or false", v)
		}
		o.DryRun = o.DryRun || b
	}
	if v := q.Get("cacertsPolicy"); v != "" {
		p, err := parseConflictPolicy(v)
		if err != nil {
			return o, err
		}
		o.CACertsPolicy = p
	}
	return o, nil
}

func parseConflictPolicy(v string) (pki.ConflictPolicy, error) {
	for _, p := range []pki.ConflictPolicy{pki.Refuse, pki.Replace, pki.Adopt} {
		if v == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("cacertsPolicy=%q: want refuse, replace or adopt", v)
}

// apply runs one apply at a time. wait bounds only the wait for the turn;
// the apply itself runs under the server's work context.
func (s *Server) apply(wait context.Context, m *spec.Mesh, o ApplyOptions, source string) (*ApplyReport, error) {
	select {
	case s.sem <- struct{}{}:
	case <-wait.Done():
		return nil, wait.Err()
	case <-s.work.Done():
		return nil, errShuttingDown
	}
	s.inflight.Add(1)
	defer func() {
		<-s.sem
		s.inflight.Done()
	}()
	if s.work.Err() != nil {
		return nil, errShuttingDown
	}
	o.Source = source
	rep, err := s.hub.Apply(s.work, m, o)
	if err != nil && s.work.Err() != nil {
		err = fmt.Errorf("%w: %v", errShuttingDown, err)
	}
	if source != "api" {
		return rep, err // the reconcile loop logs its own outcome
	}
	s.metrics.apiApplies.WithLabelValues(strconv.FormatBool(o.DryRun)).Inc()
	if err != nil {
		if !errors.Is(err, errNoSpec) {
			s.log.Error("apply failed", "dryRun", o.DryRun, "error", err.Error())
		}
		return rep, err
	}
	attrs := []any{"dryRun", o.DryRun, "id", rep.ID, "changes", rep.Changes(), "failed", len(rep.Failed()), "duration", rep.Duration.String()}
	if ferr := rep.Err(); ferr != nil {
		s.log.Warn("apply finished with failures", append(attrs, "error", ferr.Error())...)
	} else {
		s.log.Info("apply finished", attrs...)
	}
	return rep, nil
}

var errShuttingDown = errors.New("the hub is shutting down")

func (s *Server) handleJournal(w http.ResponseWriter, r *http.Request) {
	limit := defaultJournalLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit=%q: want a number >= 0 (0: all)", v))
			return
		}
		limit = n
	}
	kind, err := ParseJournalKind(r.URL.Query().Get("kind"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	applies, err := s.hub.History(r.Context(), limit, kind)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if applies == nil {
		applies = []state.ApplyRecord{}
	}
	writeJSON(w, http.StatusOK, applies)
}

// readSpec parses the request body as a mesh spec; an empty body is nil,
// the stored spec.
func readSpec(w http.ResponseWriter, r *http.Request) (*spec.Mesh, error) {
	if r.Body == nil {
		return nil, nil
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSpecBytes))
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, nil
	}
	return spec.Parse("spec", data)
}

// errorBody is the JSON of every API error.
type errorBody struct {
	Error string `json:"error"`
	// Problems are a spec's validation problems, one by one.
	Problems []spec.Problem `json:"problems,omitempty"`
}

func errorStatus(err error) int {
	var se *spec.Error
	switch {
	case errors.As(err, &se):
		return http.StatusBadRequest
	case errors.Is(err, errNoSpec):
		return http.StatusConflict
	case errors.Is(err, errShuttingDown), errors.Is(err, state.ErrClosed):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, code int, err error) {
	body := errorBody{Error: err.Error()}
	var se *spec.Error
	if errors.As(err, &se) {
		body.Problems = se.Problems
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing left to tell it
}
