package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flotillamesh/flotilla/server/dashboard"
	"github.com/flotillamesh/flotilla/server/ring"
)

// Server defaults.
const (
	DefaultListen      = "127.0.0.1:8443"
	DefaultInterval    = time.Minute
	DefaultGracePeriod = 30 * time.Second
	// TokenEnv holds the hub's bearer token when no token file is named.
	TokenEnv = "FLOTILLA_HUB_TOKEN"
	// MinTokenLength keeps guessable tokens out: the API can rewrite every
	// cluster's CA.
	MinTokenLength = 16
	// maxSpecBytes bounds a request body; a mesh spec is a few KiB.
	maxSpecBytes = 1 << 20
	// defaultJournalLimit is how many applies GET /api/v1/journal returns
	// without ?limit.
	defaultJournalLimit = 50
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Listen is the TCP address to serve on (DefaultListen when empty; port 0
	// picks a free one, see Server.Addr).
	Listen string
	// Token is the bearer token every /api/v1/ call must present.
	Token string
	// Interval is the reconcile period (DefaultInterval when zero); a
	// negative interval disables the loop.
	Interval time.Duration
	// GracePeriod is how long shutdown waits for an apply or reconcile in
	// progress before cancelling it (DefaultGracePeriod when zero).
	GracePeriod time.Duration
	// TLSCertFile and TLSKeyFile are the serving certificate and key. When
	// both are empty the server makes its own, for the listen address and
	// SANs, under a CA kept sealed in the state (or a new one per start
	// when the state has no key).
	TLSCertFile, TLSKeyFile string
	// SANs are extra DNS names or IPs for the generated certificate.
	SANs []string
	// CAOut, when set, receives the generated certificate's CA (PEM), for
	// clients to pin (flotilla --hub-ca).
	CAOut string
	// Logger receives structured logs; nil logs JSON to stderr.
	Logger *slog.Logger
	// ReadTimeout, WriteTimeout and IdleTimeout bound a connection
	// (DefaultReadTimeout... when zero; see limits.go).
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// MetricsPublic serves /metrics without the token.
	MetricsPublic bool
	// DashboardRefresh is how often the dashboard refreshes what it shows
	// while a browser watches (dashboard.DefaultRefresh when zero).
	DashboardRefresh time.Duration
	// Ring, when set, makes this hub one replica of several sharing an etcd
	// state: the ring's owner of the mesh runs the reconcile pass.
	Ring *ring.Ring
}

// Server is the long-running hub: the HTTP API over TLS, the reconcile loop,
// metrics and health. Build one with NewServer, then Run it once.
type Server struct {
	hub      *Hub
	log      *slog.Logger
	opts     ServerOptions
	tokenSum [sha256.Size]byte
	ln       net.Listener
	caPEM    []byte
	metrics  *metrics
	replica  *replicaMetrics

	// sem serializes applies (API and reconcile loop): a channel rather
	// than a mutex so that waiting for it respects contexts.
	sem chan struct{}
	// verifying holds the one verify that runs: they share namespace
	// sample in every cluster.
	verifying chan struct{}
	// work is the context applies and reconciles run under: cancelled only
	// when the shutdown grace period is over.
	work       context.Context
	cancelWork context.CancelFunc
	inflight   sync.WaitGroup

	mu      sync.Mutex
	lastErr error // the last reconcile's hard failure, for /readyz

	dash *dashboard.Dashboard // the web UI at /, over the API's handlers
}

// NewServer binds the listen address and prepares TLS (writing the CA file
// when the certificate is generated). It does not serve until Run.
func NewServer(ctx context.Context, hub *Hub, o ServerOptions) (*Server, error) {
	if hub == nil || hub.Store == nil {
		return nil, errors.New("server: no hub state")
	}
	if len(o.Token) < MinTokenLength {
		return nil, fmt.Errorf("server: the bearer token must be at least %d characters (give --token-file or %s)", MinTokenLength, TokenEnv)
	}
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.GracePeriod <= 0 {
		o.GracePeriod = DefaultGracePeriod
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return nil, errors.New("server: give both a TLS certificate and key, or neither")
	}
	s := &Server{hub: hub, log: o.Logger, opts: o, tokenSum: sha256.Sum256([]byte(o.Token)), metrics: newMetrics(), sem: make(chan struct{}, 1), verifying: make(chan struct{}, 1)}
	s.replica = newReplicaMetrics(s.metrics.registry, hub.Store)
	s.work, s.cancelWork = context.WithCancel(context.Background())
	if hub.Progress == nil {
		hub.Progress = &logWriter{log: s.log}
	}

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("server: listen %s: %w", o.Listen, err)
	}
	tlsCfg, caPEM, err := s.serverTLS(ctx, ln.Addr())
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.caPEM = caPEM
	if o.CAOut != "" {
		if caPEM == nil {
			ln.Close()
			return nil, errors.New("server: a CA file is written only for a generated certificate; clients pin the CA of --tls-cert themselves")
		}
		if err := writeFileAtomic(o.CAOut, caPEM, 0o644); err != nil {
			ln.Close()
			return nil, fmt.Errorf("server: write CA to %s: %w", o.CAOut, err)
		}
	}
	s.ln = newTLSListener(ln, tlsCfg)
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the base URL of the API on the listen address.
func (s *Server) URL() string { return "https://" + s.ln.Addr().String() }

// CAPEM is the CA of the generated serving certificate (nil when the
// certificate was given).
func (s *Server) CAPEM() []byte { return s.caPEM }

// Run serves and reconciles until ctx is done, then shuts down: it stops
// accepting connections and scheduling reconciles, lets an apply or
// reconcile in progress finish within the grace period, and cancels it when
// the period is over (the engine abandons it; its journal entry stays
// unfinished). The caller closes the state after Run returns.
func (s *Server) Run(ctx context.Context) error {
	defer s.cancelWork()
	srv := s.httpServer()
	srv.RegisterOnShutdown(s.dash.Close) // its event streams would hold Shutdown for the grace period
	served := make(chan error, 1)
	go func() { served <- srv.Serve(s.ln) }()
	s.log.Info("hub serving", "address", s.ln.Addr().String(), "interval", s.opts.Interval.String())

	loopCtx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		if s.opts.Interval > 0 {
			s.loop(loopCtx)
		}
	}()

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	stopLoop()
	s.log.Info("hub shutting down", "gracePeriod", s.opts.GracePeriod.String())
	grace, cancel := context.WithTimeout(context.Background(), s.opts.GracePeriod)
	defer cancel()
	shutdownErr := srv.Shutdown(grace) // stops accepting, waits for handlers
	idle := make(chan struct{})
	go func() {
		<-loopDone
		s.inflight.Wait()
		close(idle)
	}()
	select {
	case <-idle:
	case <-grace.Done():
		s.log.Warn("grace period over: abandoning the apply in progress")
		s.cancelWork()
		srv.Close()
		<-idle
	}
	if errors.Is(shutdownErr, context.DeadlineExceeded) {
		shutdownErr = nil // handlers were cut off above, on purpose
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	s.log.Info("hub stopped")
	return errors.Join(serveErr, shutdownErr)
}

// Handler is the server's HTTP handler: /healthz and /readyz in the open
// (ok or not ok; details with the token), /metrics and /api/v1/ behind the
// bearer token (/metrics in the open with MetricsPublic).
func (s *Server) Handler() http.Handler {
	api := http.NewServeMux()
	api.HandleFunc("GET /api/v1/status", clusterCall(s.handleStatus()))
	api.HandleFunc("POST /api/v1/status", clusterCall(s.handleStatus()))
	api.HandleFunc("GET /api/v1/check", clusterCall(s.handleCheck()))
	api.HandleFunc("POST /api/v1/check", clusterCall(s.handleCheck()))
	api.HandleFunc("POST /api/v1/apply", clusterCall(s.handleApply(false)))
	api.HandleFunc("POST /api/v1/plan", clusterCall(s.handleApply(true)))
	api.HandleFunc("POST /api/v1/verify", clusterCall(s.handleVerify))
	api.HandleFunc("GET /api/v1/journal", s.handleJournal)
	api.HandleFunc("GET /api/v1/trust", s.handleTrust)
	api.HandleFunc("POST /api/v1/federation/rotate", clusterCall(s.handleRotateReaders))
	api.HandleFunc("GET /api/v1/members", s.handleMembers)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.Handle("/api/", s.authenticate(api))
	if s.dash == nil {
		s.dash = dashboard.New(dashboard.Options{Token: s.opts.Token, API: api, Refresh: s.opts.DashboardRefresh, Log: s.log, Now: s.hub.now})
	}
	mux.Handle("/", s.dash)
	return s.logRequests(mux)
}

// authenticate admits requests with the server's bearer token. Both sides
// are hashed first so that the comparison takes the same time whatever the
// length of the guess.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			reason := "wrong token"
			if _, ok := bearer(r.Header.Get("Authorization")); !ok {
				reason = "no bearer token"
			}
			s.log.Warn("unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", reason)
			w.Header().Set("WWW-Authenticate", `Bearer realm="flotilla"`)
			writeError(w, http.StatusUnauthorized, errors.New("unauthorized: a valid bearer token is required"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

// Unwrap lets http.ResponseController reach the connection (the
// dashboard's event stream flushes).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// logRequests logs each API call (never its headers: they carry the token).
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		level := slog.LevelInfo
		if !strings.HasPrefix(r.URL.Path, "/api/") {
			level = slog.LevelDebug // probes and scrapes
		}
		s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", rec.code,
			"remote", r.RemoteAddr, "duration", time.Since(start).String())
	})
}

// logWriter turns the hub's progress lines into debug logs.
type logWriter struct {
	log *slog.Logger
	mu  sync.Mutex
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.Lines(string(p)) {
		if line = strings.TrimSpace(line); line != "" {
			l.log.Debug("progress", "line", line)
		}
	}
	return len(p), nil
}
