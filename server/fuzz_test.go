package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
)

// fuzzServer is a Server's handler over a fresh state whose clusters can
// never be reached: the fuzzer exercises the API's request handling, not
// the clusters.
func fuzzServer(f *testing.F) *Server {
	h := newHub(f)
	h.Progress = nil
	h.Connect = func(c spec.Cluster, _ string) (*kube.Cluster, error) {
		return nil, errors.New(c.Name + ": unreachable in the fuzz test")
	}
	s := &Server{hub: h, log: slog.New(slog.DiscardHandler), tokenSum: sha256.Sum256([]byte(testToken)), metrics: newMetrics(), sem: make(chan struct{}, 1)}
	s.work, s.cancelWork = context.WithCancel(context.Background())
	f.Cleanup(s.cancelWork)
	return s
}

var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/api/v1/plan"},
	{"POST", "/api/v1/status"},
	{"POST", "/api/v1/check"},
	{"GET", "/api/v1/journal"},
	{"GET", "/readyz"},
	{"GET", "/healthz"},
	{"DELETE", "/api/v1/apply"},
}

// FuzzAPIRequest sends arbitrary bodies, query strings and tokens to the
// hub's routes. Without the token every API call is 401; with it, a refused
// request is a 4xx whose JSON body says why, never a 5xx (which would mean
// the hub, not the caller, failed); nothing panics.
func FuzzAPIRequest(f *testing.F) {
	s := fuzzServer(f)
	h := s.Handler()
	spec := "apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  topology: multi-primary\n  clusters:\n" +
		"  - {name: east, context: east, network: n1, kubeconfig: /nonexistent/kubeconfig}\n  - {name: west, context: west, network: n2}\n"
	for i := range fuzzRoutes {
		f.Add(uint8(i), "", []byte(spec), true)
		f.Add(uint8(i), "dryRun=maybe&cacertsPolicy=adopt", []byte("kind: Mesh"), true)
		f.Add(uint8(i), "limit=-1", []byte{}, false)
	}
	f.Add(uint8(0), "cacertsPolicy=replace", []byte("{\"apiVersion\": 1}"), true)
	f.Add(uint8(3), "limit=99999999999999999999", []byte(nil), true)
	f.Fuzz(func(t *testing.T, route uint8, query string, body []byte, token bool) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		req := httptest.NewRequest(rt.method, "https://hub"+rt.path, bytes.NewReader(body))
		req.URL.RawQuery = query
		if token {
			req.Header.Set("Authorization", "Bearer "+testToken)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		code := w.Code
		if !strings.HasPrefix(rt.path, "/api/") {
			return
		}
		if !token {
			if code != http.StatusUnauthorized {
				t.Fatalf("%s %s without a token: %d", rt.method, rt.path, code)
			}
			return
		}
		if code >= 500 {
			t.Fatalf("%s %s?%s: %d %s", rt.method, rt.path, query, code, w.Body.String())
		}
		if code >= 400 && code != http.StatusMethodNotAllowed {
			var e errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s: %d without a JSON error: %q", rt.method, rt.path, code, w.Body.String())
			}
		}
	})
}
