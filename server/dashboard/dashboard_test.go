package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

const testToken = "0123456789abcdef-dashboard-token"

// fakeAPI answers the API's read routes with fixed JSON.
func fakeAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, `{"mesh":"m1","topology":"multi-primary","clusters":[{"name":"east","network":"n1","role":"primary","reachable":true,"remoteSecrets":[],"drift":[]}]}`)
	})
	mux.HandleFunc("GET /api/v1/trust", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"readers":[]}`) })
	mux.HandleFunc("GET /api/v1/journal", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "[]") })
	mux.HandleFunc("GET /api/v1/check", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusConflict)
		io.WriteString(w, `{"error":"no mesh has been applied yet"}`)
	})
	return mux
}

func startDashboard(t *testing.T) (*httptest.Server, *Dashboard) {
	t.Helper()
	d := New(Options{Token: testToken, API: fakeAPI(), Refresh: 50 * time.Millisecond})
	ts := httptest.NewTLSServer(d)
	t.Cleanup(func() { d.Close(); ts.Close() })
	return ts, d
}

// client has a cookie jar and does not follow redirects.
func client(t *testing.T, ts *httptest.Server) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := ts.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func signIn(t *testing.T, ts *httptest.Server, c *http.Client, token string) *http.Response {
	t.Helper()
	resp, err := c.PostForm(ts.URL+"/signin", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func get(t *testing.T, c *http.Client, u string, header map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestSignIn: the token is taken once, from the form body only, and
// becomes a Secure, HttpOnly, SameSite=Strict session cookie; without the
// session, the pages show the sign-in form and the data is refused.
func TestSignIn(t *testing.T) {
	ts, _ := startDashboard(t)
	cases := []struct {
		name      string
		signIn    func(c *http.Client) *http.Response
		wantCode  int
		signedIn  bool
		wantIndex string // in the body of GET / afterwards
	}{
		{"right token", func(c *http.Client) *http.Response { return signIn(t, ts, c, testToken) }, http.StatusSeeOther, true, "/assets/app.js"},
		{"wrong token", func(c *http.Client) *http.Response { return signIn(t, ts, c, "wrong-token-wrong-token") }, http.StatusUnauthorized, false, `name="token"`},
		{"empty token", func(c *http.Client) *http.Response { return signIn(t, ts, c, "") }, http.StatusUnauthorized, false, `name="token"`},
		{"token prefix", func(c *http.Client) *http.Response { return signIn(t, ts, c, testToken[:10]) }, http.StatusUnauthorized, false, `name="token"`},
		{"token in the URL only", func(c *http.Client) *http.Response {
			resp, err := c.Post(ts.URL+"/signin?token="+testToken, "application/x-www-form-urlencoded", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}, http.StatusUnauthorized, false, `name="token"`},
		{"from another site", func(c *http.Client) *http.Response {
			req, _ := http.NewRequest(http.MethodPost, ts.URL+"/signin", strings.NewReader("token="+testToken))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Sec-Fetch-Site", "cross-site")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}, http.StatusForbidden, false, `name="token"`},
		{"GET with the token", func(c *http.Client) *http.Response {
			resp, err := c.Get(ts.URL + "/signin?token=" + testToken)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}, http.StatusMethodNotAllowed, false, `name="token"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := client(t, ts)
			resp := tc.signIn(c)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("sign-in: %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if tc.signedIn {
				var sc *http.Cookie
				for _, ck := range resp.Cookies() {
					if ck.Name == CookieName {
						sc = ck
					}
				}
				if sc == nil || !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/" {
					t.Errorf("session cookie %+v: want Secure, HttpOnly, SameSite=Strict, Path=/", sc)
				}
				if strings.Contains(sc.Value, testToken) {
					t.Error("the cookie carries the token")
				}
			}
			code, body, h := get(t, c, ts.URL+"/", nil)
			if code != http.StatusOK || !strings.Contains(body, tc.wantIndex) {
				t.Errorf("GET /: %d, want 200 with %q", code, tc.wantIndex)
			}
			if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
				t.Errorf("Content-Security-Policy %q", csp)
			}
			code, _, _ = get(t, c, ts.URL+"/ui/api/snapshot", nil)
			if want := map[bool]int{true: 200, false: 401}[tc.signedIn]; code != want {
				t.Errorf("snapshot: %d, want %d", code, want)
			}
		})
	}
}

// TestSignOut ends the session on the hub, not only in the browser.
func TestSignOut(t *testing.T) {
	ts, _ := startDashboard(t)
	c := client(t, ts)
	signIn(t, ts, c, testToken)
	u, _ := url.Parse(ts.URL)
	cookies := c.Jar.Cookies(u)
	resp, err := c.PostForm(ts.URL+"/signout", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Replay the old cookie.
	stale := ts.Client()
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/ui/api/snapshot", nil)
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	resp, err = stale.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old cookie after sign-out: %d, want 401", resp.StatusCode)
	}
}

// TestSessionExpiry: a session ends after its lifetime.
func TestSessionExpiry(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	s := newSessions(time.Hour, func() time.Time { return now })
	id, _, err := s.create()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		after time.Duration
		want  bool
	}{{0, true}, {59 * time.Minute, true}, {time.Hour, false}, {2 * time.Hour, false}}
	for _, tc := range cases {
		now = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).Add(tc.after)
		if got := s.valid(id); got != tc.want {
			t.Errorf("after %v: valid %v, want %v", tc.after, got, tc.want)
		}
	}
}

// TestAssets: the script and the style sheet are served without a session
// (they hold no data); nothing else under /assets/ is.
func TestAssets(t *testing.T) {
	ts, _ := startDashboard(t)
	c := client(t, ts)
	cases := []struct {
		path  string
		code  int
		ctype string
	}{
		{"/assets/app.js", 200, "javascript"},
		{"/assets/style.css", 200, "text/css"},
		{"/assets/index.html", 404, ""},
		{"/assets/signin.html", 404, ""},
		{"/assets/", 404, ""},
		{"/nothing", 404, ""},
	}
	for _, tc := range cases {
		code, _, h := get(t, c, ts.URL+tc.path, nil)
		if code != tc.code || !strings.Contains(h.Get("Content-Type"), tc.ctype) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, code, h.Get("Content-Type"), tc.code, tc.ctype)
		}
	}
}

// TestEvents: a signed-in stream gets snapshots with the API's answers and
// the API's errors; it ends when the dashboard closes.
func TestEvents(t *testing.T) {
	ts, d := startDashboard(t)
	c := client(t, ts)
	signIn(t, ts, c, testToken)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/ui/api/events", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var versions []uint64
	for len(versions) < 2 && sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "{}" {
			continue
		}
		var s Snapshot
		if err := json.Unmarshal([]byte(data), &s); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		var st struct{ Mesh string }
		if err := json.Unmarshal(s.Status.Data, &st); err != nil || st.Mesh != "m1" {
			t.Errorf("status part %s: %v", s.Status.Data, err)
		}
		if s.Checks.Error != "no mesh has been applied yet" {
			t.Errorf("checks part: error %q, want the API's", s.Checks.Error)
		}
		versions = append(versions, s.Version)
	}
	if len(versions) < 2 || versions[1] <= versions[0] {
		t.Fatalf("versions %v: want two refreshes, increasing (%v)", versions, sc.Err())
	}
	d.Close()
	done := make(chan struct{})
	go func() {
		for sc.Scan() {
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end when the dashboard closed")
	}
}

// TestBrief: the journal keeps the steps that changed something or failed,
// and counts them all.
func TestBrief(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"no-op reconcile", `[{"id":2,"steps":[{"step":"a","result":"unchanged"},{"step":"b","result":"skipped"}]}]`,
			`[{"id":2,"stepCount":2,"steps":[]}]`},
		{"a repair and a failure", `[{"id":3,"steps":[{"step":"a","result":"created"},{"step":"b","result":"unchanged"},{"step":"c","result":"failed","error":"x"}]}]`,
			`[{"id":3,"stepCount":3,"steps":[{"result":"created","step":"a"},{"error":"x","result":"failed","step":"c"}]}]`},
		{"no steps", `[{"id":1}]`, `[{"id":1,"stepCount":0,"steps":[]}]`},
		{"empty journal", `[]`, `[]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := brief(Part{Data: []byte(tc.in)})
			if got.Error != "" || string(got.Data) != tc.want {
				t.Errorf("brief(%s) = %s %q, want %s", tc.in, got.Data, got.Error, tc.want)
			}
		})
	}
	if got := brief(Part{Error: "hub down"}); got.Error != "hub down" {
		t.Errorf("an error part: %+v", got)
	}
}

// TestRecheck: checks re-run on a signed-in POST, which answers the new
// snapshot; without a session it is refused.
func TestRecheck(t *testing.T) {
	ts, _ := startDashboard(t)
	cases := []struct {
		name     string
		signedIn bool
		want     int
	}{
		{"signed in", true, http.StatusOK},
		{"no session", false, http.StatusUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := client(t, ts)
			if tc.signedIn {
				signIn(t, ts, c, testToken)
			}
			resp, err := c.Post(ts.URL+"/ui/api/check", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("POST /ui/api/check: %d, want %d", resp.StatusCode, tc.want)
			}
			if !tc.signedIn {
				return
			}
			var s Snapshot
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				t.Fatal(err)
			}
			if s.ChecksAt.IsZero() || s.Checks.Error == "" {
				t.Errorf("snapshot after a re-run: checksAt %v, checks %+v", s.ChecksAt, s.Checks)
			}
		})
	}
}
