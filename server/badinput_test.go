package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadAPIRequests is the API's part of the bad-input corpus: each request
// is refused with a JSON error naming the parameter, field or file at fault,
// and the state file is byte for byte unchanged afterwards.
func TestBadAPIRequests(t *testing.T) {
	h := newHub(t)
	allowed := t.TempDir()
	h.Inputs = InputPolicy{Confined: true, AllowPaths: []string{allowed}}
	s := &Server{hub: h, log: slog.New(slog.DiscardHandler), metrics: newMetrics(), tokenSum: sha256.Sum256([]byte(testToken)), sem: make(chan struct{}, 1)}
	s.work, s.cancelWork = context.WithCancel(context.Background())
	defer s.cancelWork()
	handler := s.Handler()
	outside := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(outside, []byte("apiVersion: v1\nkind: Config\n"), 0o600)
	inside := filepath.Join(allowed, "kubeconfig")
	os.WriteFile(inside, []byte("clusters: {{{\n"), 0o600)
	os.Symlink(outside, filepath.Join(allowed, "link"))
	head := "apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
	mesh := func(lines ...string) string {
		return head + "  topology: multi-primary\n" + strings.Join(lines, "\n") + "\n"
	}
	one := "  clusters:\n  - {name: east, context: east, network: n1}"
	auth := "Bearer " + testToken
	cases := []struct {
		name, method, path, auth, body string
		code                           int
		want                           []string
	}{
		{"unknown field", "POST", "/api/v1/apply", auth, mesh("  colour: blue", one), 400, []string{"spec.colour", "line 6"}},
		{"not a mesh", "POST", "/api/v1/plan", auth, "- a\n- b\n", 400, []string{"expected a mapping"}},
		{"invalid yaml", "POST", "/api/v1/plan", auth, "apiVersion: [\n", 400, []string{"invalid YAML"}},
		{"two documents", "POST", "/api/v1/plan", auth, mesh(one) + "---\nkind: Mesh\n", 400, []string{"second YAML document"}},
		{"wrong kind", "POST", "/api/v1/plan", auth, strings.Replace(mesh(one), "kind: Mesh", "kind: Pod", 1), 400, []string{"kind", "Pod"}},
		{"invalid topology", "POST", "/api/v1/apply", auth, head + "  topology: star\n" + one + "\n", 400, []string{"spec.topology", "star"}},
		{"bad status spec", "POST", "/api/v1/status", auth, "kind: Mesh\n", 400, []string{"apiVersion"}},
		{"bad check spec", "POST", "/api/v1/check", auth, "kind: Mesh\n", 400, []string{"apiVersion"}},
		{"bad dryRun", "POST", "/api/v1/apply?dryRun=maybe", auth, "", 400, []string{"dryRun", "maybe"}},
		{"bad cacertsPolicy", "POST", "/api/v1/apply?cacertsPolicy=steal", auth, "", 400, []string{"cacertsPolicy", "steal"}},
		{"negative journal limit", "GET", "/api/v1/journal?limit=-3", auth, "", 400, []string{"limit", "-3"}},
		{"unknown journal kind", "GET", "/api/v1/journal?kind=people", auth, "", 400, []string{"kind", "people"}},
		{"journal limit not a number", "GET", "/api/v1/journal?limit=ten", auth, "", 400, []string{"limit", "ten"}},
		{"body over the limit", "POST", "/api/v1/plan", auth, head + strings.Repeat("# padding\n", maxSpecBytes/10+1), 400, []string{"read spec", "too large"}},
		{"root key outside --allow-path", "POST", "/api/v1/apply", auth, mesh("  pki: {root: {certFile: /etc/hostname, keyFile: /etc/shadow}}", one), 400, []string{"spec.pki.root.keyFile /etc/shadow", "--allow-path"}},
		{"kubeconfig outside --allow-path", "POST", "/api/v1/plan", auth, mesh("  clusters:\n  - {name: east, context: east, network: n1, kubeconfig: " + outside + "}"), 400, []string{"spec.clusters[0] (east).kubeconfig", outside}},
		{"kubeconfig by symlink out", "POST", "/api/v1/status", auth, mesh("  clusters:\n  - {name: east, context: east, network: n1, kubeconfig: " + filepath.Join(allowed, "link") + "}"), 400, []string{"spec.clusters[0] (east).kubeconfig", "outside every --allow-path"}},
		{"kubeconfig relative", "POST", "/api/v1/check", auth, mesh("  clusters:\n  - {name: east, context: east, network: n1, kubeconfig: kubeconfig}"), 400, []string{"spec.clusters[0] (east).kubeconfig", "absolute path"}},
		{"kubeconfig inside but garbage", "POST", "/api/v1/plan", auth, mesh("  allowLoopbackAPIServers: true", "  clusters:\n  - {name: east, context: east, network: n1, kubeconfig: "+inside+"}"), 400, []string{"spec.clusters[0].context", "cluster east"}},
		{"no mesh applied yet", "POST", "/api/v1/apply", auth, "", 409, []string{"no mesh has been applied yet"}},
		{"no token", "POST", "/api/v1/apply", "", mesh(one), 401, []string{"bearer token"}},
		{"wrong token", "POST", "/api/v1/apply", "Bearer 0123456789abcdef-wrong-token", mesh(one), 401, []string{"bearer token"}},
		{"basic auth", "GET", "/api/v1/journal", "Basic " + testToken, "", 401, []string{"bearer token"}},
		{"token in the query", "GET", "/api/v1/journal?access_token=" + testToken, "", "", 401, []string{"bearer token"}},
	}
	before, err := os.ReadFile(h.Store.Path())
	if err != nil {
		t.Fatal(err)
	}
	passed := 0
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			handler.ServeHTTP(w, req)
			var e errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatalf("%d, body is not a JSON error: %q", w.Code, w.Body.String())
			}
			if w.Code != tc.code {
				t.Errorf("status %d, want %d: %s", w.Code, tc.code, e.Error)
			}
			for _, want := range tc.want {
				if !strings.Contains(e.Error, want) {
					t.Errorf("error does not say %q: %s", want, e.Error)
				}
			}
			after, err := os.ReadFile(h.Store.Path())
			if err != nil || !bytes.Equal(after, before) {
				t.Errorf("the state file changed (%v)", err)
			}
		})
		if ok {
			passed++
		}
	}
	t.Logf("bad-input corpus (API): %d of %d cases pass", passed, len(cases))
}
