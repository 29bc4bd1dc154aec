package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
)

func meshNaming(t *testing.T, rootCert, kubeconfig string) *spec.Mesh {
	t.Helper()
	m := &spec.Mesh{Spec: spec.MeshSpec{Clusters: []spec.Cluster{{Name: "east", Kubeconfig: kubeconfig}}}}
	if rootCert != "" {
		m.Spec.PKI.Root = &spec.RootSource{CertFile: rootCert}
	}
	return m
}

// TestAdmitSpec: a confined hub reads only files under --allow-path, with
// symlinks resolved; the CLI on the user's own state is not confined.
func TestAdmitSpec(t *testing.T) {
	allowed, outside := t.TempDir(), t.TempDir()
	inside := filepath.Join(allowed, "kubeconfig")
	secret := filepath.Join(outside, "root-key.pem")
	for _, p := range []string{inside, secret} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	escape := filepath.Join(allowed, "escape")
	if err := os.Symlink(secret, escape); err != nil {
		t.Fatal(err)
	}
	confined := InputPolicy{Confined: true, AllowPaths: []string{allowed}}
	cases := []struct {
		name   string
		policy InputPolicy
		m      *spec.Mesh
		want   string // "" admits
	}{
		{"not confined names anything", InputPolicy{}, meshNaming(t, "/etc/passwd", secret), ""},
		{"hub's own kubeconfig", confined, meshNaming(t, "", ""), ""},
		{"kubeconfig under the allowed dir", confined, meshNaming(t, "", inside), ""},
		{"no allowed dir at all", InputPolicy{Confined: true}, meshNaming(t, "", inside), "--allow-path DIR"},
		{"root cert outside", confined, meshNaming(t, "/etc/passwd", ""), "spec.pki.root.certFile /etc/passwd"},
		{"kubeconfig outside", confined, meshNaming(t, "", secret), "spec.clusters[0] (east).kubeconfig " + secret},
		{"dot-dot out of the dir", confined, meshNaming(t, "", allowed+"/../"+filepath.Base(outside)+"/root-key.pem"), "outside every --allow-path"},
		{"symlink out of the dir", confined, meshNaming(t, "", escape), "outside every --allow-path"},
		{"relative path", confined, meshNaming(t, "", "kubeconfig"), "absolute path"},
		{"missing file", confined, meshNaming(t, "", filepath.Join(allowed, "nope")), "cannot resolve"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.admitSpec(tc.m)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInputRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal with %q", err, tc.want)
			}
		})
	}
}

// TestAdmitConnection: kubeconfigs that skip TLS verification are refused
// unless allowed for the run, and then warned about; a confined hub refuses
// credential plugins unless --allow-exec-plugins.
func TestAdmitConnection(t *testing.T) {
	insecure := &rest.Config{Host: "https://10.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	exec := &rest.Config{Host: "https://10.0.0.1:6443", ExecProvider: &clientcmdapi.ExecConfig{Command: "aws"}}
	authp := &rest.Config{Host: "https://10.0.0.1:6443", AuthProvider: &clientcmdapi.AuthProviderConfig{Name: "oidc"}}
	plain := &rest.Config{Host: "https://10.0.0.1:6443"}
	c := spec.Cluster{Name: "east", Context: "east-admin", Kubeconfig: "/k/east"}
	cases := []struct {
		name, want, warn string
		policy           InputPolicy
		cfg              *rest.Config
	}{
		{name: "verified TLS", cfg: plain},
		{name: "insecure refused", cfg: insecure, want: `east: context "east-admin" of kubeconfig /k/east: refused by the hub's input policy: it sets insecure-skip-tls-verify`},
		{name: "insecure allowed, loudly", cfg: insecure, policy: InputPolicy{InsecureSkipTLSVerify: true}, warn: "WARNING: east: context \"east-admin\" of kubeconfig /k/east skips TLS verification"},
		{name: "exec on the CLI", cfg: exec},
		{name: "exec on a confined hub", cfg: exec, policy: InputPolicy{Confined: true}, want: `exec credential plugin "aws"`},
		{name: "auth provider on a confined hub", cfg: authp, policy: InputPolicy{Confined: true}, want: `auth-provider plugin "oidc"`},
		{name: "exec allowed on a confined hub", cfg: exec, policy: InputPolicy{Confined: true, AllowExecPlugins: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var warn bytes.Buffer
			tc.policy.Warnings = &warn
			err := tc.policy.admitConnection(c, "", &kube.Cluster{Name: "east", Config: tc.cfg})
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if !strings.Contains(warn.String(), tc.warn) || (tc.warn == "") != (warn.Len() == 0) {
				t.Fatalf("warnings %q, want %q", warn.String(), tc.warn)
			}
		})
	}
}

// TestAPIRefusesHubFiles: a spec posted to a confined hub that names a file
// of the hub is refused before anything reads it, naming the field.
func TestAPIRefusesHubFiles(t *testing.T) {
	h := newHub(t)
	h.Inputs = InputPolicy{Confined: true}
	s := &Server{hub: h, log: slog.New(slog.DiscardHandler), metrics: newMetrics(), tokenSum: sha256.Sum256([]byte(testToken)), sem: make(chan struct{}, 1)}
	s.work, s.cancelWork = context.WithCancel(context.Background())
	defer s.cancelWork()
	body := "apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  topology: multi-primary\n" +
		"  pki: {root: {certFile: /etc/hostname, keyFile: /etc/shadow}}\n  clusters:\n  - {name: east, context: east, network: n1}\n"
	for _, path := range []string{"/api/v1/plan", "/api/v1/apply", "/api/v1/status", "/api/v1/check"} {
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, req)
		if w.Code != 400 || !strings.Contains(w.Body.String(), "spec.pki.root.keyFile /etc/shadow") {
			t.Errorf("%s: %d %s", path, w.Code, w.Body.String())
		}
	}
}

// TestApplyRefusesInsecureKubeconfig: an apply through a kubeconfig that
// skips TLS verification is refused before it records anything.
func TestApplyRefusesInsecureKubeconfig(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters:
- name: east
  cluster: {server: "https://10.255.255.1:6443", insecure-skip-tls-verify: true}
users:
- name: east
  user: {token: t}
contexts:
- name: east
  context: {cluster: east, user: east}
`), 0o600)
	m, err := spec.Parse("mesh.yaml", []byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  topology: multi-primary\n  clusters:\n  - {name: east, context: east, network: n1, kubeconfig: "+kc+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := newHub(t)
	_, err = h.Apply(context.Background(), m, ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "insecure-skip-tls-verify") || !strings.Contains(err.Error(), "east") {
		t.Fatalf("apply through an insecure kubeconfig: %v", err)
	}
	if _, err := h.StoredMesh(context.Background()); !errors.Is(err, errNoSpec) {
		t.Fatalf("the refused apply recorded its spec: %v", err)
	}
}
