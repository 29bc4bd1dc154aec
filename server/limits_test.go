package server

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestServerLimits: the HTTP server carries read, write and idle timeouts
// and a header cap, whatever the options say.
func TestServerLimits(t *testing.T) {
	s := &Server{hub: newHub(t), log: slog.New(slog.DiscardHandler), metrics: newMetrics()}
	srv := s.httpServer()
	if srv.ReadTimeout != DefaultReadTimeout || srv.WriteTimeout != DefaultWriteTimeout || srv.IdleTimeout != DefaultIdleTimeout {
		t.Errorf("timeouts read %s write %s idle %s", srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
	}
	if srv.ReadHeaderTimeout <= 0 || srv.ReadHeaderTimeout > srv.ReadTimeout {
		t.Errorf("read header timeout %s", srv.ReadHeaderTimeout)
	}
	if srv.MaxHeaderBytes != MaxHeaderBytes {
		t.Errorf("header cap %d, want %d", srv.MaxHeaderBytes, MaxHeaderBytes)
	}
}

// TestServerCutsTricklingClient: a client that sends headers and then
// trickles its body loses the connection once the read timeout is over.
func TestServerCutsTricklingClient(t *testing.T) {
	s := &Server{hub: newHub(t), log: slog.New(slog.DiscardHandler), metrics: newMetrics(), opts: ServerOptions{ReadTimeout: 200 * time.Millisecond}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := s.httpServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /api/v1/plan HTTP/1.1\r\nHost: hub\r\nContent-Length: 1000000\r\n\r\nkind")
	// The server closes the connection on its own; a server without a read
	// timeout would block this read until the test's deadline.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		_, err = conn.Read(make([]byte, 1))
	}
	if err == nil {
		t.Fatal("the connection is still open")
	}
}

// TestProbesWithoutToken: /healthz and /readyz answer without the token but
// say only ok or not ok; with it, /readyz gives the reason.
func TestProbesWithoutToken(t *testing.T) {
	s := &Server{hub: newHub(t), log: slog.New(slog.DiscardHandler), metrics: newMetrics(), tokenSum: sha256.Sum256([]byte(testToken))}
	h := s.Handler()
	get := func(path, auth string) (int, string) {
		req := httptest.NewRequest("GET", path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, strings.TrimSpace(w.Body.String())
	}
	secret := "reconcile east: kubeconfig /etc/secret/kubeconfig: https://10.1.2.3:6443 refused"
	cases := []struct {
		name, path, auth string
		failing          bool
		code             int
		body             string
	}{
		{"healthz", "/healthz", "", false, 200, "ok"},
		{"readyz ready", "/readyz", "", false, 200, "ok"},
		{"readyz failing, no token", "/readyz", "", true, 503, "not ok"},
		{"readyz failing, wrong token", "/readyz", "Bearer nope-nope-nope-nope", true, 503, "not ok"},
		{"readyz failing, token", "/readyz", "Bearer " + testToken, true, 503, "last reconcile failed: " + secret},
		{"healthz while failing", "/healthz", "", true, 200, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.mu.Lock()
			s.lastErr = nil
			if tc.failing {
				s.lastErr = errors.New(secret)
			}
			s.mu.Unlock()
			code, body := get(tc.path, tc.auth)
			if code != tc.code || body != tc.body {
				t.Fatalf("got %d %q, want %d %q", code, body, tc.code, tc.body)
			}
		})
	}
}

// TestMetricsPublic: --metrics-public serves /metrics without the token.
func TestMetricsPublic(t *testing.T) {
	for _, public := range []bool{false, true} {
		s := &Server{hub: newHub(t), log: slog.New(slog.DiscardHandler), metrics: newMetrics(), tokenSum: sha256.Sum256([]byte(testToken)), opts: ServerOptions{MetricsPublic: public}}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		want := http.StatusUnauthorized
		if public {
			want = http.StatusOK
		}
		if w.Code != want {
			t.Errorf("public=%v: /metrics without a token: %d, want %d", public, w.Code, want)
		}
	}
}
