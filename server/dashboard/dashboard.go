// Package dashboard is the hub's web dashboard: the federation at a glance
// (topology, trust, checks, history), served beside the API on the hub's
// TLS listener. A person signs in once with the hub's token and gets a
// session cookie; the pages read what the API reports, through the API's
// own handlers, from a snapshot refreshed in the background while someone
// watches and pushed to browsers as server-sent events.
//
// Everything the browser loads is embedded (assets/): no external network,
// no build chain.
package dashboard

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Defaults.
const (
	// DefaultRefresh is how often the snapshot is refreshed while a browser
	// watches. Each refresh reads every cluster and probes every remote
	// secret, like `flotilla status`: not too often.
	DefaultRefresh = 10 * time.Second
	// DefaultSessionLifetime bounds a sign-in.
	DefaultSessionLifetime = 12 * time.Hour
	// checkEvery: checks re-run with every nth refresh (and on request),
	// since they observe the clusters a second time.
	checkEvery = 3
)

//go:embed assets
var assets embed.FS

// Options configure a Dashboard.
type Options struct {
	// Token is the hub's bearer token, which signing in takes.
	Token string
	// API serves the hub's /api/v1/ routes without authentication: the
	// dashboard calls it only for a signed-in session.
	API http.Handler
	// Refresh is how often the snapshot is refreshed while a browser
	// watches (DefaultRefresh when zero).
	Refresh time.Duration
	// SessionLifetime bounds a session (DefaultSessionLifetime when zero).
	SessionLifetime time.Duration
	// Log receives sign-in failures and refresh errors; nil discards them.
	Log *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Dashboard is the web UI's handler. Close it when the server shuts down,
// so that event streams end.
type Dashboard struct {
	opts     Options
	tokenSum [sha256.Size]byte
	handler  http.Handler
	sessions *sessions
	feed     *feed

	closeOnce sync.Once
	done      chan struct{}
}

// New returns the dashboard over opts.API, which must be set. With an
// empty Token nobody can sign in.
func New(opts Options) *Dashboard {
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.SessionLifetime <= 0 {
		opts.SessionLifetime = DefaultSessionLifetime
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Dashboard{
		opts:     opts,
		tokenSum: sha256.Sum256([]byte(opts.Token)),
		sessions: newSessions(opts.SessionLifetime, opts.Now),
		done:     make(chan struct{}),
	}
	d.feed = newFeed(d)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.handleIndex)
	mux.HandleFunc("POST /signin", d.handleSignIn)
	mux.HandleFunc("POST /signout", d.handleSignOut)
	mux.HandleFunc("GET /assets/{file}", serveAsset)
	mux.Handle("GET /ui/api/snapshot", d.requireSession(http.HandlerFunc(d.handleSnapshot)))
	mux.Handle("GET /ui/api/events", d.requireSession(http.HandlerFunc(d.handleEvents)))
	mux.Handle("POST /ui/api/check", d.requireSession(http.HandlerFunc(d.handleRecheck)))
	// Forms and fetches from other sites are refused (the cookie is also
	// SameSite=Strict; this covers sign-in, which has no cookie yet).
	d.handler = http.NewCrossOriginProtection().Handler(securityHeaders(mux))
	return d
}

// serveAsset serves the script and the style sheet (the pages themselves
// go through handleIndex, which checks the session).
func serveAsset(w http.ResponseWriter, r *http.Request) {
	switch f := r.PathValue("file"); f {
	case "app.js", "style.css":
		http.ServeFileFS(w, r, assets, "assets/"+f)
	default:
		http.NotFound(w, r)
	}
}

// ServeHTTP serves the dashboard's pages, assets and data.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.handler.ServeHTTP(w, r) }

// Close ends the event streams and the background refresh.
func (d *Dashboard) Close() { d.closeOnce.Do(func() { close(d.done) }) }

// validToken compares hashes, so that the time taken does not depend on the
// length of the guess.
func (d *Dashboard) validToken(token string) bool {
	sum := sha256.Sum256([]byte(token))
	return token != "" && subtle.ConstantTimeCompare(sum[:], d.tokenSum[:]) == 1
}

// securityHeaders keep the pages to their own origin: scripts and styles
// come only from /assets/, nothing may frame them, nothing is cached.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// contextUntilClosed is ctx, also cancelled when the dashboard closes.
func (d *Dashboard) contextUntilClosed(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-d.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
