package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/flotillamesh/flotilla/server/spec"
)

// handleRotateReaders serves POST /api/v1/federation/rotate[?cluster=NAME]:
// the rotation takes the hub's apply turn, as an apply does, and once
// started runs to its end even if the caller goes away.
func (s *Server) handleRotateReaders(w http.ResponseWriter, r *http.Request) {
	o, m, ok := readMeshRequest(s, w, r, func(r *http.Request) (ReaderRotationOptions, error) {
		o := ReaderRotationOptions{Cluster: r.URL.Query().Get("cluster")}
		if v := r.URL.Query().Get("settle"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return o, fmt.Errorf("settle=%q: want a duration such as 2s", v)
			}
			o.Settle = d
		}
		return o, nil
	})
	if !ok {
		return
	}
	select {
	case s.sem <- struct{}{}:
	case <-r.Context().Done():
		return
	case <-s.work.Done():
		writeError(w, errorStatus(errShuttingDown), errShuttingDown)
		return
	}
	s.inflight.Add(1)
	defer func() {
		<-s.sem
		s.inflight.Done()
	}()
	out, err := s.hub.RotateReaders(s.work, m, o)
	if out == nil {
		writeError(w, errorStatus(err), err)
		return
	}
	if err != nil {
		s.log.Warn("reader rotation finished with failures", "error", err.Error())
	} else {
		s.log.Info("reader rotation finished", "readers", len(out.Readers))
	}
	// A rotation that ran answers its result; its Err is the verdict.
	writeJSON(w, http.StatusOK, out)
}

// RotateReaders asks the hub to rotate reader credentials (m nil: the
// stored spec).
func (c *Client) RotateReaders(ctx context.Context, m *spec.Mesh, o ReaderRotationOptions) (*ReaderRotation, error) {
	q := url.Values{}
	if o.Cluster != "" {
		q.Set("cluster", o.Cluster)
	}
	if o.Settle != 0 {
		q.Set("settle", o.Settle.String())
	}
	var out ReaderRotation
	if err := c.do(ctx, http.MethodPost, "/api/v1/federation/rotate", q, m, &out); err != nil {
		return nil, err
	}
	return &out, out.Err()
}
