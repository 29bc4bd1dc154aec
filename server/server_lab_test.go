package server

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// serverLabMesh is the lab mesh in a control-plane namespace of its own,
// apart from other tests' and earlier runs' (each test has a state of its
// own, hence a root of its own).
func serverLabMesh(t *testing.T, l *lab.Lab, ns string) *spec.Mesh {
	t.Helper()
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: hubtest}
spec:
  topology: multi-primary
  controlPlaneNamespace: %s
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, ns, l.Kubeconfig, l.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestServerLab runs the hub over a two-cluster mesh applied to the lab:
// drift (east's cacerts, west's remote secret for east, west's network
// label) deleted under it comes back within a reconcile interval or so, as
// it was; the API answers the same status as the embedded engine; metrics
// count the reconciles; the state file is 0600 with no private key in the
// clear.
func TestServerLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	east, west := connectLab(t, l, "east"), connectLab(t, l, "west")
	// The Sail Istio resource is cluster-scoped, one name, and its namespace
	// immutable: take it over from the other tests and leave none behind.
	for _, kc := range []*kube.Cluster{east, west} {
		deleteIstio(t, kc)
		t.Cleanup(func() { deleteIstio(t, kc) })
	}
	ns := fmt.Sprintf("istio-hub-%x", rand.Uint32())
	for _, kc := range []*kube.Cluster{east, west} {
		t.Cleanup(func() {
			err := kc.Kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("%s: delete namespace %s: %v", kc.Name, ns, err)
			}
		})
	}
	h := newHub(t)
	m := serverLabMesh(t, l, ns)
	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	origCA, err := pki.ReadCACerts(ctx, east, ns)
	if err != nil || origCA == nil {
		t.Fatalf("east: cacerts after apply: %v", err)
	}
	remoteName := "istio-remote-secret-east"
	origRemote, err := west.Kube.CoreV1().Secrets(ns).Get(ctx, remoteName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("west: remote secret: %v", err)
	}

	const interval = 2 * time.Second
	ts := startServer(t, h, interval)
	c := ts.client(t, testToken)

	// The API's status is the embedded engine's.
	remote, err := c.Status(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	local, err := h.Status(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := clusterNames(remote), clusterNames(local); !slices.Equal(got, want) || remote.RootFingerprint != local.RootFingerprint {
		t.Fatalf("status over the API: clusters %v root %s; embedded: %v root %s", got, remote.RootFingerprint, want, local.RootFingerprint)
	}

	// Drift under the running server.
	if err := east.Kube.CoreV1().Secrets(ns).Delete(ctx, pki.SecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := west.Kube.CoreV1().Secrets(ns).Delete(ctx, remoteName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:null}}}`, gateways.NetworkLabel)
	if _, err := west.Kube.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	// A reconcile in progress may have read before the deletes: allow it
	// and the next few. The deadline only keeps a broken loop from hanging.
	deadline := time.Now().Add(20*interval + time.Minute)
	var restoredCA *pki.ClusterCACerts
	for {
		restoredCA, err = pki.ReadCACerts(ctx, east, ns)
		if err != nil {
			t.Fatal(err)
		}
		_, rerr := west.Kube.CoreV1().Secrets(ns).Get(ctx, remoteName, metav1.GetOptions{})
		nsObj, nerr := west.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if restoredCA != nil && rerr == nil && nerr == nil && nsObj.Labels[gateways.NetworkLabel] == "network2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drift not repaired: cacerts %v, remote secret %v, network label %q", restoredCA != nil, rerr, nsObj.Labels[gateways.NetworkLabel])
		}
		time.Sleep(interval / 4)
	}
	if !bytes.Equal(restoredCA.CACerts.RootCert, origCA.CACerts.RootCert) {
		t.Error("east: restored cacerts has another root")
	}
	if !bytes.Equal(restoredCA.CACerts.CACert, origCA.CACerts.CACert) {
		t.Error("east: restored cacerts has another intermediate (the stored one should come back)")
	}
	restoredRemote, err := west.Kube.CoreV1().Secrets(ns).Get(ctx, remoteName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := kubeconfigServer(t, restoredRemote.Data["east"]), kubeconfigServer(t, origRemote.Data["east"]); got != want || got == "" {
		t.Errorf("west: restored remote secret reads %q, the original %q", got, want)
	}

	// The journal recorded the repair.
	journal, err := c.Journal(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !repaired(journal) {
		t.Errorf("no journal entry shows cacerts recreated in east: %d entries", len(journal))
	}

	// Metrics, without a token: counters, and per-cluster gauges that come
	// to show both clusters healthy once a reconcile after the repair has
	// observed them (the one before may have seen the drift).
	want := []string{
		"flotilla_reconciles_total ", "flotilla_reconcile_errors_total ", "flotilla_last_reconcile_timestamp_seconds ",
		`flotilla_cluster_healthy{cluster="east"} 1`, `flotilla_cluster_healthy{cluster="west"} 1`,
		`flotilla_intermediate_not_after_seconds{cluster="east"} `, `flotilla_intermediate_not_after_seconds{cluster="west"} `,
		`flotilla_root_not_after_seconds{cluster="east"} `, `flotilla_root_not_after_seconds{cluster="west"} `,
	}
	for {
		code, text := ts.get(t, "/metrics", map[string]string{"Authorization": "Bearer " + testToken})
		if code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		var missing []string
		for _, series := range want {
			if !strings.Contains(text, "\n"+series) {
				missing = append(missing, strings.TrimSpace(series))
			}
		}
		if strings.Contains(text, "\nflotilla_reconciles_total 0\n") {
			missing = append(missing, "a reconcile counted")
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %v:\n%s", missing, grepLines(text, "flotilla_"))
		}
		time.Sleep(interval / 4)
	}
	if code, body := ts.get(t, "/readyz", nil); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}

	// The state file: owner-only, and every key in it sealed.
	path := h.Store.Path()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Error("the state file holds a private key in the clear")
	}

	if err := ts.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func connectLab(t *testing.T, l *lab.Lab, name string) *kube.Cluster {
	t.Helper()
	kc, err := l.Cluster(name).Connect()
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func deleteIstio(t *testing.T, kc *kube.Cluster) {
	t.Helper()
	err := kc.Dynamic.Resource(sailIstioGVR).Delete(context.Background(), deploy.IstioName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("%s: delete Istio %s: %v", kc.Name, deploy.IstioName, err)
	}
}

func grepLines(text, substr string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func clusterNames(st *Status) []string {
	var names []string
	for _, c := range st.Clusters {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	return names
}

func kubeconfigServer(t *testing.T, data []byte) string {
	t.Helper()
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		t.Fatalf("remote secret kubeconfig: %v", err)
	}
	return cfg.Host
}

func repaired(journal []state.ApplyRecord) bool {
	for _, a := range journal {
		for _, s := range a.Steps {
			if s.Cluster == "east" && strings.HasPrefix(s.Step, "cacerts") && s.Result == string(pki.Created) {
				return true
			}
		}
	}
	return false
}
