// Package realistio runs flotilla against lab clusters that run Istio
// itself (lab.Options.RealIstio): Istio's own charts installed as the Sail
// Operator installs them, and a real istiod per istiod pod. What these tests
// see is Istio's reading of what flotilla wrote, not a model of it.
package realistio

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

var testLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, RealIstio: true})

// cmLab runs cert-manager's controllers beside real Istio, for the
// cert-manager PKI mode (its own clusters: one mesh per lab cluster).
var cmLab = lab.NewSharedWith(lab.Options{Clusters: []string{"north", "south"}, RealIstio: true, CertManager: true})

func TestMain(m *testing.M) {
	os.Exit(lab.RunShared(m, testLab, cmLab, privLab, trioLab, ambLab, ambNetLab, prLab, extLab))
}

var istioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}

// TestMultiPrimaryMultiNetwork applies a multi-primary mesh over two
// networks and checks what real Istio makes of it, in each cluster: the
// charts' Helm releases are deployed (no ownership conflict with what
// flotilla wrote), istiod signs with the plug-in CA from cacerts (its
// published root is the mesh root), and istiod's own clusterz shows the
// other cluster synced through flotilla's remote secret.
func TestMultiPrimaryMultiNetwork(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)

	for _, tc := range []struct{ cluster, other string }{{"east", "west"}, {"west", "east"}} {
		t.Run(tc.cluster, func(t *testing.T) {
			c := l.Cluster(tc.cluster)
			kc, err := c.Connect()
			if err != nil {
				t.Fatal(err)
			}
			waitReconciled(t, ctx, kc, c, "default")
			for _, rel := range []struct{ ns, name string }{{"istio-system", "default-istiod"}, {lab.OperatorNamespace, "default-base"}} {
				if got := releaseStatus(t, ctx, kc, rel.ns, rel.name); got != "deployed" {
					t.Errorf("Helm release %s/%s: %s, want deployed", rel.ns, rel.name, got)
				}
			}
			in := waitIstiodReady(t, ctx, c)
			t.Logf("istiod %s/%s on %s: ready %s after start, restarts %d, RSS %s",
				in.Namespace, in.Pod, in.Address, in.Ready.Sub(in.Started).Round(10*time.Millisecond), in.Restarts, rss(in.PID))

			cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
			if err != nil || cc == nil {
				t.Fatalf("cacerts: %v", err)
			}
			published := waitRootCert(t, ctx, kc, "istio-system")
			if strings.TrimSpace(published) != strings.TrimSpace(string(cc.CACerts.RootCert)) {
				t.Errorf("istio-ca-root-cert published by istiod is not cacerts' root-cert.pem: istiod is not using the plug-in CA")
			}

			var clusters []struct {
				ID         string `json:"id"`
				SecretName string `json:"secretName"`
				SyncStatus string `json:"syncStatus"`
			}
			err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
				clusters = nil
				if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
					return false, nil
				}
				for _, cl := range clusters {
					if cl.ID == tc.other && cl.SyncStatus == "synced" {
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				t.Fatalf("istiod's clusterz does not show %s synced: %+v", tc.other, clusters)
			}
			t.Logf("clusterz: %+v", clusters)
		})
	}

	// flotilla check reads the same through the API servers' pod proxy.
	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	istiodChecks := []string{"istiod sees remote clusters", "istiod uses the mesh CA", "istiod knows every network's gateway"}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		}
		if slices.Contains(istiodChecks, c.Name) {
			seen[c.Name+" ["+c.Cluster+"]"] = true
			t.Logf("check %s [%s]: %s", c.Name, c.Cluster, c.Message)
		}
	}
	for _, name := range istiodChecks {
		for _, cluster := range []string{"east", "west"} {
			if !seen[name+" ["+cluster+"]"] {
				t.Errorf("check %q did not read istiod's view in %s (read: %v)", name, cluster, seen)
			}
		}
	}
}

// applyMultiPrimary applies a multi-primary mesh over two networks (east
// on network1, west on network2) to the lab and returns the hub and the
// parsed spec; the apply must succeed in every cluster.
func applyMultiPrimary(t *testing.T, ctx context.Context, l *lab.Lab) (*server.Hub, *spec.Mesh) {
	t.Helper()
	return applyDoc(t, ctx, l, multiPrimaryDoc(l, ""))
}

// applyDoc applies the mesh spec doc to the lab with the hub whose state
// lives with the lab, and returns the hub and the parsed spec; the apply must
// succeed in every cluster.
func applyDoc(t *testing.T, ctx context.Context, l *lab.Lab, doc string) (*server.Hub, *spec.Mesh) {
	t.Helper()
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	h := labHub(t, ctx, l)
	start := time.Now()
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("apply: %s", time.Since(start).Round(100*time.Millisecond))
	return h, m
}

// waitReconciled waits for the lab's Sail Operator to report the Istio
// resource reconciled, failing with its message (a Helm error) otherwise.
func waitReconciled(t *testing.T, ctx context.Context, kc *kube.Cluster, c *lab.Cluster, name string) {
	t.Helper()
	var msg string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := kc.Dynamic.Resource(istioGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		// Reconciled speaks of the generation sail-lab last observed: after
		// a spec change, an older Reconciled is not this one's.
		if obs, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration"); obs != u.GetGeneration() {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, co := range conds {
			cm, _ := co.(map[string]any)
			if cm["type"] != "Reconciled" {
				continue
			}
			msg, _ = cm["message"].(string)
			if cm["status"] == "True" {
				return true, nil
			}
			if msg != "" && u.GetGeneration() > 0 {
				return false, fmt.Errorf("%s", msg)
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("Istio %s not reconciled: %v (sail-lab log: %s)", name, err, c.Log("sail-lab"))
	}
}

// releaseStatus reads a Helm release's status from its storage Secret's labels.
func releaseStatus(t *testing.T, ctx context.Context, kc *kube.Cluster, ns, name string) string {
	t.Helper()
	list, err := kc.Kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	latest, status := 0, "missing"
	for _, s := range list.Items {
		if v, _ := strconv.Atoi(s.Labels["version"]); v > latest {
			latest, status = v, s.Labels["status"]
		}
	}
	return status
}

func waitIstiodReady(t *testing.T, ctx context.Context, c *lab.Cluster) lab.IstiodInfo {
	t.Helper()
	var got []lab.IstiodInfo
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		got = c.Istiods()
		return len(got) == 1 && !got[0].Ready.IsZero(), nil
	})
	if err != nil {
		t.Fatalf("no ready istiod: %+v (logs in %s)", got, filepath.Dir(c.Log("sail-lab")))
	}
	return got[0]
}

// waitRootCert reads the root certificate istiod publishes in every
// namespace (ConfigMap istio-ca-root-cert): its CA's root.
func waitRootCert(t *testing.T, ctx context.Context, kc *kube.Cluster, ns string) string {
	t.Helper()
	var root string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := kc.Kube.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		root = cm.Data["root-cert.pem"]
		return root != "", nil
	})
	if err != nil {
		t.Fatalf("istiod published no istio-ca-root-cert in %s: %v", ns, err)
	}
	return root
}

func getJSON(ctx context.Context, addr, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, "8080")+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.Unmarshal(body, into)
}

// rss is a process's resident memory, for the test log.
func rss(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
