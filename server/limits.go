package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flotillamesh/flotilla/server/state"
)

// Connection limits of the hub's HTTP server. A client that trickles its
// headers or body, or never reads the answer, holds a connection only this
// long.
const (
	DefaultReadTimeout  = 30 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	DefaultIdleTimeout  = 2 * time.Minute
	// MaxHeaderBytes caps a request's headers: a bearer token and a few
	// standard headers fit many times over.
	MaxHeaderBytes = 16 << 10
	// clusterWriteTimeout replaces the write timeout for calls that wait on
	// clusters (apply, plan, status, check): an apply of many clusters
	// takes minutes, and its answer is written only at the end.
	clusterWriteTimeout = time.Hour
)

func (o *ServerOptions) limitDefaults() {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
}

// httpServer is the server with its limits; Run serves it.
func (s *Server) httpServer() *http.Server {
	o := s.opts
	o.limitDefaults()
	return &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: min(10*time.Second, o.ReadTimeout),
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// clusterCall lifts the write timeout for a call that waits on clusters.
// The request body is read by then (ReadTimeout still bounds it).
func clusterCall(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Not every ResponseWriter has deadlines (httptest's has none).
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(clusterWriteTimeout))
		h(w, r)
	}
}

// authorized reports whether r carries the server's bearer token.
func (s *Server) authorized(r *http.Request) bool {
	got, ok := bearer(r.Header.Get("Authorization"))
	sum := sha256.Sum256([]byte(got))
	return ok && subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1
}

// handleHealth is liveness: the process serves.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "ok\n")
}

// handleReady is readiness: the state answers and the last reconcile did not
// fail. Without the token it says only ok or not ok: the reason names
// clusters, files and servers, which are for the hub's operators.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	detail := ""
	if err := s.hub.Store.View(r.Context(), func(*state.Tx) error { return nil }); err != nil {
		detail = "state: " + err.Error()
	} else if err := s.hub.Store.Ping(r.Context()); err != nil {
		// On etcd a read may come from one member's copy: readiness needs a
		// majority, since without one nothing can be written.
		detail = "state: " + err.Error()
	} else {
		s.mu.Lock()
		lastErr := s.lastErr
		s.mu.Unlock()
		if lastErr != nil {
			detail = "last reconcile failed: " + lastErr.Error()
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	if detail == "" {
		io.WriteString(w, "ok\n")
		return
	}
	if !s.authorized(r) {
		http.Error(w, "not ok", http.StatusServiceUnavailable)
		return
	}
	http.Error(w, detail, http.StatusServiceUnavailable)
}

// metricsHandler serves /metrics behind the token unless the operator made
// it public: the series name every cluster of the mesh.
func (s *Server) metricsHandler() http.Handler {
	h := promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})
	if s.opts.MetricsPublic {
		return h
	}
	return s.authenticate(h)
}
