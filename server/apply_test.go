package server

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var testLab = lab.NewShared("east", "west")

// trioLab is for what takes three clusters (one leaves, two stay and read
// each other); started only by the tests that use it.
var trioLab = lab.NewShared("north", "south", "centre")

func TestMain(m *testing.M) { os.Exit(lab.RunShared(m, testLab, trioLab)) }

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

// isolatedHub is a hub of its own with a two-cluster ECDSA mesh in a
// control-plane namespace of its own (prefix and a number): another hub's
// cacerts would be refused. The cluster-scoped Sail resources are reset
// before and after the test.
func isolatedHub(ctx context.Context, t *testing.T, l *lab.Lab, prefix string) (*Hub, *spec.Mesh, string) {
	t.Helper()
	ns := fmt.Sprintf("%s%d", prefix, time.Now().Unix()%100000)
	resetSail(ctx, t, l)
	t.Cleanup(func() { resetSail(context.Background(), t, l) })
	return newHub(t), benchMesh(t, l, "ECDSA-P256", ns), ns
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

	counter := &requestCounter{n: map[string]int{}}
	h.Connect = counter.connect
	rep2, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep2.Err(); err != nil {
		t.Fatal(err)
	}
	if w := counter.writes(); len(w) != 0 {
		t.Errorf("second apply made write calls, want none: %v", w)
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

// TestApplyLabRepairsWithoutRewriting: a re-apply reads before it writes,
// and writes exactly the objects whose live state differs from the spec:
// a field someone changed, a label removed, an object deleted. The next
// re-apply writes nothing again.
func TestApplyLabRepairsWithoutRewriting(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "rp")
	counter := &requestCounter{n: map[string]int{}}
	h.Connect = counter.connect
	apply := func(t *testing.T) map[string]int {
		t.Helper()
		counter.reset()
		rep, err := h.Apply(ctx, m, ApplyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		return counter.writes()
	}
	apply(t)
	if w := apply(t); len(w) != 0 {
		t.Fatalf("no-op re-apply made write calls: %v", w)
	}

	east := l.Cluster("east").Client()
	west := l.Cluster("west").Client()
	const gw = "istio-eastwestgateway"
	tests := []struct {
		name  string
		drift func(t *testing.T)
		want  map[string]int // the writes of the repairing apply
		check func(t *testing.T)
	}{
		{
			name: "service target port changed by another writer",
			drift: func(t *testing.T) {
				svc, err := east.CoreV1().Services(ns).Get(ctx, gw, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for i := range svc.Spec.Ports {
					if svc.Spec.Ports[i].Port == 15443 {
						svc.Spec.Ports[i].TargetPort = intstr.FromInt32(16443)
					}
				}
				if _, err := east.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{FieldManager: "someone"}); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]int{"east apply services": 1},
			check: func(t *testing.T) {
				svc, err := east.CoreV1().Services(ns).Get(ctx, gw, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range svc.Spec.Ports {
					if p.Port == 15443 && p.TargetPort.IntValue() != 15443 {
						t.Errorf("east: service %s: port 15443 targets %s after the repair, want 15443", gw, p.TargetPort.String())
					}
				}
			},
		},
		{
			name: "network label removed",
			drift: func(t *testing.T) {
				patch := []byte(`{"metadata":{"labels":{"topology.istio.io/network":null}}}`)
				if _, err := west.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]int{"west apply namespaces": 1},
			check: func(t *testing.T) {
				ns, err := west.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if got := ns.Labels["topology.istio.io/network"]; got != "network2" {
					t.Errorf("west: network label %q after the repair, want network2", got)
				}
			},
		},
		{
			name: "reader cluster role deleted",
			drift: func(t *testing.T) {
				if err := east.RbacV1().ClusterRoles().Delete(ctx, federation.ReaderClusterRoleName(ns), metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]int{"east apply clusterroles": 1},
			check: func(t *testing.T) {
				if _, err := east.RbacV1().ClusterRoles().Get(ctx, federation.ReaderClusterRoleName(ns), metav1.GetOptions{}); err != nil {
					t.Errorf("east: reader cluster role not restored: %v", err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.drift(t)
			if got := apply(t); !maps.Equal(got, tc.want) {
				t.Errorf("repairing apply wrote %v, want %v", got, tc.want)
			}
			tc.check(t)
			if got := apply(t); len(got) != 0 {
				t.Errorf("apply after the repair wrote %v, want nothing", got)
			}
		})
	}

	// A changed spec changes the digest: west moves to another network, and
	// its namespace label, gateway and Istio resource are written.
	for i := range m.Spec.Clusters {
		if m.Spec.Clusters[i].Name == "west" {
			m.Spec.Clusters[i].Network = "network3"
		}
	}
	got := apply(t)
	for _, w := range []string{"west apply namespaces", "west apply deployments", "west apply istios"} {
		if got[w] != 1 {
			t.Errorf("apply after a network change: %d %q, want 1 (all writes: %v)", got[w], w, got)
		}
	}
	if got := apply(t); len(got) != 0 {
		t.Errorf("apply after the network change wrote %v, want nothing", got)
	}
}
