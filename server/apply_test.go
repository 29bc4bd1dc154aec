package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var testLab = lab.NewShared("east", "west")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

// labMesh is a two-cluster multi-primary, multi-network spec for the lab.
func labMesh(t testing.TB, l *lab.Lab, alg string) *spec.Mesh {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: %s}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, alg, l.Kubeconfig, l.Kubeconfig)
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newHub(t testing.TB) *Hub {
	t.Helper()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Hub{Store: st, Progress: testWriter{t}}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestApplyLab applies a two-cluster mesh to the lab, then again: the first
// converges (one root, an intermediate and remote secret per cluster), the
// second changes nothing.
func TestApplyLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHub(t)
	m := labMesh(t, l, "ECDSA-P256")

	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}

	roots := map[string]bool{}
	intermediates := map[string]bool{}
	rvs := map[string]string{}
	for _, name := range []string{"east", "west"} {
		kc, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		roots[string(cc.CACerts.RootCert)] = true
		intermediates[string(cc.CACerts.CACert)] = true
		rvs[name+"/cacerts"] = cc.ResourceVersion
		other := map[string]string{"east": "west", "west": "east"}[name]
		sec, err := kc.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-"+other, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: remote secret for %s: %v", name, other, err)
		}
		rvs[name+"/remote"] = sec.ResourceVersion
	}
	if len(roots) != 1 || len(intermediates) != 2 {
		t.Fatalf("got %d roots and %d intermediates, want 1 and 2", len(roots), len(intermediates))
	}

	rep2, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep2.Err(); err != nil {
		t.Fatal(err)
	}
	if n := rep2.Changes(); n != 0 {
		t.Errorf("second apply counted %d changes, want 0", n)
	}
	for _, s := range rep2.Steps {
		if strings.HasPrefix(s.Step, "cacerts") || strings.HasPrefix(s.Step, "secret ") || strings.HasPrefix(s.Step, "reader") || s.Step == "control plane" {
			if s.Action != "unchanged" {
				t.Errorf("second apply: %s %s: %s, want unchanged", s.Cluster, s.Step, s.Action)
			}
		}
	}
	for _, name := range []string{"east", "west"} {
		kc, _ := l.Cluster(name).Connect()
		cc, _ := pki.ReadCACerts(ctx, kc, "istio-system")
		if cc.ResourceVersion != rvs[name+"/cacerts"] {
			t.Errorf("%s: cacerts resourceVersion moved on a no-op apply", name)
		}
	}
}
