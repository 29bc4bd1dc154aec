package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server/spec"
)

const testToken = "0123456789abcdef-test-token"

// testServer is a running Server on a loopback port over h, with its CA
// written to a file; it is shut down when the test ends.
type testServer struct {
	*Server
	caFile string
	done   chan error
	cancel context.CancelFunc
}

func startServer(t *testing.T, h *Hub, interval time.Duration) *testServer {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "hub-ca.pem")
	log := slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := NewServer(context.Background(), h, ServerOptions{
		Listen: "127.0.0.1:0", Token: testToken, Interval: interval, CAOut: caFile, Logger: log, GracePeriod: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, caFile: caFile, done: make(chan error, 1), cancel: cancel}
	go func() { ts.done <- s.Run(ctx) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop shuts the server down and waits for Run; a Run that never returns
// fails the test at its deadline rather than hanging it.
func (ts *testServer) stop(t *testing.T) error {
	t.Helper()
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok {
			close(ts.done)
		}
		return err
	case <-time.After(time.Minute):
		t.Fatal("server did not shut down")
		return nil
	}
}

func (ts *testServer) client(t *testing.T, token string) *Client {
	t.Helper()
	c, err := NewClient(ClientOptions{URL: ts.URL(), Token: token, CAFile: ts.caFile})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// httpClient trusts only the server's CA.
func (ts *testServer) httpClient(t *testing.T) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(ts.caFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("CA file %s: %v", ts.caFile, err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (ts *testServer) get(t *testing.T, path string, header map[string]string) (int, string) {
	t.Helper()
	return ts.do(t, http.MethodGet, path, header, nil)
}

func (ts *testServer) do(t *testing.T, method, path string, header map[string]string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := ts.httpClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestServerAuth: every /api/v1/ call and /metrics need the exact bearer
// token; health does not.
func TestServerAuth(t *testing.T) {
	ts := startServer(t, newHub(t), -1)
	cases := []struct {
		name   string
		method string
		path   string
		auth   string
		want   int
	}{
		{"no token", "GET", "/api/v1/journal", "", 401},
		{"no token on apply", "POST", "/api/v1/apply", "", 401},
		{"no token on an unknown path", "GET", "/api/v1/nothing", "", 401},
		{"basic scheme", "GET", "/api/v1/journal", "Basic " + testToken, 401},
		{"empty bearer", "GET", "/api/v1/journal", "Bearer ", 401},
		{"wrong token", "GET", "/api/v1/journal", "Bearer wrong-token-wrong-token", 401},
		{"token prefix", "GET", "/api/v1/journal", "Bearer " + testToken[:len(testToken)-1], 401},
		{"token with a suffix", "GET", "/api/v1/journal", "Bearer " + testToken + "x", 401},
		{"right token", "GET", "/api/v1/journal", "Bearer " + testToken, 200},
		{"right token, lower-case scheme", "GET", "/api/v1/journal", "bearer " + testToken, 200},
		{"right token, no mesh yet", "GET", "/api/v1/status", "Bearer " + testToken, 409},
		{"healthz without token", "GET", "/healthz", "", 200},
		{"readyz without token", "GET", "/readyz", "", 200},
		{"metrics without token", "GET", "/metrics", "", 401},
		{"metrics with the token", "GET", "/metrics", "Bearer " + testToken, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			if tc.auth != "" {
				h["Authorization"] = tc.auth
			}
			code, body := ts.do(t, tc.method, tc.path, h, nil)
			if code != tc.want {
				t.Fatalf("%s %s: status %d, want %d (%s)", tc.method, tc.path, code, tc.want, body)
			}
			if code == 401 && !strings.Contains(body, `"error"`) {
				t.Errorf("401 body is not a JSON error: %s", body)
			}
		})
	}
}

// TestServerTLSPinned: the generated certificate verifies against the CA
// file the server wrote and no other; the CA is kept across restarts.
func TestServerTLSPinned(t *testing.T) {
	h := newHub(t)
	ts := startServer(t, h, -1)

	written, err := os.ReadFile(ts.caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(written, ts.CAPEM()) {
		t.Fatal("the CA file differs from the server's CA")
	}
	if _, err := ts.client(t, testToken).Journal(context.Background(), 0); err != nil {
		t.Fatalf("pinned client: %v", err)
	}

	other, err := newServingCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(otherFile, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, caFile := range map[string]string{"system roots": "", "another CA": otherFile} {
		c, err := NewClient(ClientOptions{URL: ts.URL(), Token: testToken, CAFile: caFile})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Journal(context.Background(), 0)
		var uerr x509.UnknownAuthorityError
		if !errors.As(err, &uerr) {
			t.Errorf("%s: got %v, want an unknown-authority error", name, err)
		}
	}

	// A restart on the same state serves under the same CA.
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	ts2 := startServer(t, h, -1)
	if !bytes.Equal(ts2.CAPEM(), written) {
		t.Error("a restarted server uses another CA: pinned clients would break")
	}
	if _, err := ts2.client(t, testToken).Journal(context.Background(), 0); err != nil {
		t.Fatalf("pinned client after restart: %v", err)
	}
}

// TestClientErrors: the hub's error answers come back as Go errors with the
// hub's message; a rejected spec's problems as a *spec.Error.
func TestClientErrors(t *testing.T) {
	ts := startServer(t, newHub(t), -1)
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "missing-kubeconfig")
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: `+missing+`}
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		call     func() error
		code     int
		contains string
		specErr  bool
	}{
		{"status without a stored spec", func() error { _, err := ts.client(t, testToken).Status(ctx, nil); return err },
			409, "no mesh has been applied yet", false},
		{"check without a stored spec", func() error { _, err := ts.client(t, testToken).Check(ctx, nil); return err },
			409, "no mesh has been applied yet", false},
		{"reconcile without a stored spec", func() error { _, err := ts.client(t, testToken).Apply(ctx, nil, ApplyOptions{}); return err },
			409, "no mesh has been applied yet", false},
		{"spec the hub cannot use", func() error { _, err := ts.client(t, testToken).Apply(ctx, m, ApplyOptions{}); return err },
			400, "missing-kubeconfig", true},
		{"plan of a spec the hub cannot use", func() error {
			_, err := ts.client(t, testToken).Apply(ctx, m, ApplyOptions{DryRun: true})
			return err
		}, 400, "missing-kubeconfig", true},
		{"wrong token", func() error { _, err := ts.client(t, "wrong-token-wrong-token").Journal(ctx, 0); return err },
			401, "unauthorized", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got %v, want an *APIError", err)
			}
			if ae.StatusCode != tc.code || !strings.Contains(err.Error(), tc.contains) || !strings.HasPrefix(err.Error(), "hub: ") {
				t.Errorf("got %d %q, want %d and a message with %q", ae.StatusCode, err, tc.code, tc.contains)
			}
			var se *spec.Error
			if errors.As(err, &se) != tc.specErr {
				t.Errorf("errors.As(*spec.Error) = %v, want %v", !tc.specErr, tc.specErr)
			}
		})
	}
	j, err := ts.client(t, testToken).Journal(ctx, 0)
	if err != nil || len(j) != 0 {
		t.Errorf("journal after rejected applies: %d entries, %v; want none", len(j), err)
	}
}

// TestServerBadRequests: malformed input gets a 400 with the reason, as JSON.
func TestServerBadRequests(t *testing.T) {
	ts := startServer(t, newHub(t), -1)
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	cases := []struct {
		name, method, path, body, contains string
	}{
		{"unknown field", "POST", "/api/v1/apply", "apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  topology: multi-primary\n  colour: blue\n", "line 6"},
		{"not a mesh", "POST", "/api/v1/plan", "- a\n- b\n", "expected a mapping"},
		{"bad dryRun", "POST", "/api/v1/apply?dryRun=maybe", "", "dryRun"},
		{"bad cacertsPolicy", "POST", "/api/v1/apply?cacertsPolicy=steal", "", "cacertsPolicy"},
		{"bad journal limit", "GET", "/api/v1/journal?limit=-3", "", "limit"},
		{"bad status spec", "POST", "/api/v1/status", "kind: Mesh\n", "apiVersion"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := ts.do(t, tc.method, tc.path, auth, []byte(tc.body))
			var eb errorBody
			if code != 400 || json.Unmarshal([]byte(body), &eb) != nil || !strings.Contains(eb.Error, tc.contains) {
				t.Errorf("got %d %s, want 400 with %q", code, body, tc.contains)
			}
		})
	}
}

// TestClientNonJSONError: an answer that is not the hub's (a proxy, a wrong
// URL) still comes back as an error naming the status.
func TestClientNonJSONError(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream went away", http.StatusBadGateway)
	}))
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL, Token: testToken, Transport: srv.Client().Transport})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Status(context.Background(), nil)
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 502 || !strings.Contains(err.Error(), "upstream went away") {
		t.Fatalf("got %v, want a 502 error with the body", err)
	}
}

// TestNewClientRejects: a client refuses what would leak the token or
// cannot work.
func TestNewClientRejects(t *testing.T) {
	cases := []struct {
		name     string
		o        ClientOptions
		contains string
	}{
		{"plain http", ClientOptions{URL: "http://127.0.0.1:8443", Token: testToken}, "https"},
		{"no host", ClientOptions{URL: "https://", Token: testToken}, "https://host:port"},
		{"no token", ClientOptions{URL: "https://127.0.0.1:8443"}, TokenEnv},
		{"missing CA file", ClientOptions{URL: "https://127.0.0.1:8443", Token: testToken, CAFile: "/nonexistent/ca.pem"}, "hub CA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("got %v, want an error with %q", err, tc.contains)
			}
		})
	}
}

// TestNewServerRejects: a server does not start with a weak token or half a
// TLS configuration.
func TestNewServerRejects(t *testing.T) {
	h := newHub(t)
	cases := []struct {
		name     string
		o        ServerOptions
		contains string
	}{
		{"no token", ServerOptions{Listen: "127.0.0.1:0"}, "token"},
		{"short token", ServerOptions{Listen: "127.0.0.1:0", Token: "short"}, "at least"},
		{"cert without key", ServerOptions{Listen: "127.0.0.1:0", Token: testToken, TLSCertFile: "c.pem"}, "both"},
		{"bad listen address", ServerOptions{Listen: "127.0.0.1:99999", Token: testToken}, "listen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewServer(context.Background(), h, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("got %v, want an error with %q", err, tc.contains)
			}
		})
	}
}

// TestServerShutdownIdle: an idle server (its loop finding no mesh to
// reconcile) stops when its context ends, and its port is closed.
func TestServerShutdownIdle(t *testing.T) {
	ts := startServer(t, newHub(t), 50*time.Millisecond)
	if code, body := ts.get(t, "/readyz", nil); code != 200 {
		t.Fatalf("readyz: %d %s", code, body)
	}
	if err := ts.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := ts.httpClient(t).Get(ts.URL() + "/healthz"); err == nil {
		t.Error("the server still answers after shutdown")
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "token")
	if err := os.WriteFile(existing, []byte("from-the-file-0123456789\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte("from-the-file-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == TokenEnv {
				return v
			}
			return ""
		}
	}
	cases := []struct {
		name, file, env, want, errContains string
		created                            bool
	}{
		{name: "file wins over env", file: existing, env: "from-env", want: "from-the-file-0123456789"},
		{name: "env without a file", env: " from-env-0123456789 ", want: "from-env-0123456789"},
		{name: "neither", errContains: TokenEnv},
		{name: "empty file", file: empty, errContains: "empty"},
		{name: "file others can read", file: loose, errContains: "chmod 600 " + loose},
		{name: "missing file is created", file: filepath.Join(dir, "new-token"), created: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, created, err := LoadToken(tc.file, env(tc.env))
			if tc.errContains != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errContains) {
					t.Fatalf("got %v, want an error with %q", err, tc.errContains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if created != tc.created {
				t.Errorf("created = %v, want %v", created, tc.created)
			}
			if tc.created {
				fi, err := os.Stat(tc.file)
				if err != nil || fi.Mode().Perm() != 0o600 || len(tok) < MinTokenLength {
					t.Fatalf("created token file: %v mode %v, token length %d", err, fi.Mode(), len(tok))
				}
				again, created, err := LoadToken(tc.file, env(""))
				if err != nil || created || again != tok {
					t.Errorf("re-reading the created file: %q %v %v, want %q", again, created, err, tok)
				}
				return
			}
			if tok != tc.want {
				t.Errorf("token %q, want %q", tok, tc.want)
			}
		})
	}
}

// TestReadToken: a client never creates a token file.
func TestReadToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if _, err := ReadToken(file, func(string) string { return "" }); err == nil {
		t.Fatal("a missing token file is not an error")
	}
	if _, err := os.Stat(file); err == nil {
		t.Fatal("ReadToken created the token file")
	}
	tok, err := ReadToken("", func(k string) string { return map[string]string{TokenEnv: "env-token-0123456789"}[k] })
	if err != nil || tok != "env-token-0123456789" {
		t.Fatalf("token from env: %q %v", tok, err)
	}
}

func TestServingSANs(t *testing.T) {
	cases := []struct {
		listen string
		extra  []string
		want   []string
	}{
		{"127.0.0.1:8443", nil, []string{"127.0.0.1", "localhost", "::1"}},
		{"hub.example.com:8443", []string{"10.0.0.7"}, []string{"hub.example.com", "localhost", "10.0.0.7"}},
		{"0.0.0.0:8443", nil, []string{"127.0.0.1", "localhost"}},
		{":8443", []string{"hub.internal"}, []string{"127.0.0.1", "hub.internal"}},
	}
	for _, tc := range cases {
		got := servingSANs(tc.listen, nil, tc.extra)
		for _, w := range tc.want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				t.Errorf("%s: SANs %v lack %s", tc.listen, got, w)
			}
		}
	}
}
