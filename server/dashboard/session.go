package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"html/template"
	"net/http"
	"sync"
	"time"
)

// CookieName is the session cookie.
const CookieName = "flotilla_session"

// maxSessions bounds the sessions kept: the oldest goes first.
const maxSessions = 1024

// sessions are the signed-in browsers, in memory: a restart of the hub
// signs everyone out. Only a hash of each cookie is kept.
type sessions struct {
	lifetime time.Duration
	now      func() time.Time

	mu   sync.Mutex
	byID map[[sha256.Size]byte]time.Time // expiry
}

func newSessions(lifetime time.Duration, now func() time.Time) *sessions {
	return &sessions{lifetime: lifetime, now: now, byID: map[[sha256.Size]byte]time.Time{}}
}

// create returns a new session's cookie value.
func (s *sessions) create() (string, time.Time, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", time.Time{}, err
	}
	id := base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	exp := now.Add(s.lifetime)
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest [sha256.Size]byte
	var oldestExp time.Time
	for k, e := range s.byID {
		if !now.Before(e) {
			delete(s.byID, k)
		} else if oldestExp.IsZero() || e.Before(oldestExp) {
			oldest, oldestExp = k, e
		}
	}
	if len(s.byID) >= maxSessions {
		delete(s.byID, oldest)
	}
	s.byID[sha256.Sum256([]byte(id))] = exp
	return id, exp, nil
}

func (s *sessions) valid(id string) bool {
	if id == "" {
		return false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.byID[k]
	if ok && !s.now().Before(exp) {
		delete(s.byID, k)
		return false
	}
	return ok
}

func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, sha256.Sum256([]byte(id)))
}

func (d *Dashboard) signedIn(r *http.Request) bool {
	c, err := r.Cookie(CookieName)
	return err == nil && d.sessions.valid(c.Value)
}

// requireSession answers 401 to a request without a valid session.
func (d *Dashboard) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !d.signedIn(r) {
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

var signInPage = template.Must(template.ParseFS(assets, "assets/signin.html"))

func (d *Dashboard) handleIndex(w http.ResponseWriter, r *http.Request) {
	if !d.signedIn(r) {
		d.signInForm(w, http.StatusOK, "")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	http.ServeFileFS(w, r, assets, "assets/index.html")
}

func (d *Dashboard) signInForm(w http.ResponseWriter, code int, problem string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_ = signInPage.Execute(w, struct{ Problem string }{problem}) // the browser went away
}

// handleSignIn takes the token from the form body only (never the URL) and
// starts a session.
func (d *Dashboard) handleSignIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	token := r.PostFormValue("token")
	if !d.validToken(token) {
		d.opts.Log.Warn("dashboard: sign-in refused", "remote", r.RemoteAddr)
		d.signInForm(w, http.StatusUnauthorized, "That is not the hub's token.")
		return
	}
	id, exp, err := d.sessions.create()
	if err != nil {
		http.Error(w, "cannot start a session", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: id, Path: "/", Expires: exp,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	d.opts.Log.Info("dashboard: signed in", "remote", r.RemoteAddr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Dashboard) handleSignOut(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		d.sessions.end(c.Value)
	}
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
