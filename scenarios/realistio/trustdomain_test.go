package realistio

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

const labTrustDomain = "flotilla.example"

// TestTrustDomain applies the multi-primary, multi-network mesh with
// trustDomain flotilla.example and reads what real Istio makes of it: the
// istio ConfigMap the chart renders from the Istio resource names the
// domain, a second apply changes nothing, istiod's active mesh config
// (/debug/mesh) has it, every sample pod's certificate, which the
// emulator's agent gets from istiod's CA, carries
// spiffe://flotilla.example/ns/sample/sa/<its account>, istiod's CDS names
// helloworld's identity in it, verify crosses both clusters with no
// failure, and flotilla check reads the domain from each istiod. The lab is
// then put back on cluster.local (for the package's other tests), and
// checking the flotilla.example spec against it must fail, naming
// cluster.local, in both clusters.
func TestTrustDomain(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, m := applyDoc(t, ctx, l, multiPrimaryDoc(l, "  trustDomain: "+labTrustDomain+"\n"))
	restored := false
	t.Cleanup(func() {
		if !restored {
			restoreTrustDomain(t, l, h)
		}
	})

	istiods := map[string]lab.IstiodInfo{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
		// waitReconciled may see the previous generation's condition when
		// the lab ran the mesh on cluster.local before: wait for the render.
		var mesh string
		err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			cm, err := kc.Kube.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			mesh = cm.Data["mesh"]
			return strings.Contains(mesh, "trustDomain: "+labTrustDomain), nil
		})
		if err != nil {
			t.Errorf("%s: ConfigMap istio-system/istio rendered by the chart lacks trustDomain %s:\n%s", c.Name, labTrustDomain, mesh)
		}
		istiods[c.Name] = waitIstiodReady(t, ctx, c)
		waitIstiodTrustDomain(t, ctx, c.Name, istiods[c.Name], labTrustDomain)
	}
	// The rendered trust domain round-trips through the Sail CRD's schema:
	// applying the same spec again changes nothing.
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if n := rep.Changes(); n != 0 {
		t.Errorf("second apply of the flotilla.example spec counted %d changes, want 0: %+v", n, rep.Steps)
	}
	em := startEmulator(t, l)

	res, err := h.Verify(ctx, m, server.VerifyOptions{Keep: true})
	t.Cleanup(func() { removeSample(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, c := range res.Clients {
		t.Logf("%s %s: %d requests, answers %v, %d failed %v", c.Cluster, c.Pod, c.Requests, c.Answers, c.Failures, c.Errors)
		if c.Failures != 0 {
			t.Errorf("%s %s: %d of %d requests failed: %v", c.Cluster, c.Pod, c.Failures, c.Requests, c.Errors)
		}
	}
	if err := res.Err(); err != nil {
		t.Fatalf("verify: %v", err)
	}

	// Each pod's identity is its service account's (curl runs as curl,
	// helloworld as default); helloworld's, in istiod's CDS, is default's.
	accounts := map[string]string{} // cluster/pod: service account
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		pods, err := kc.Kube.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			accounts[c.Name+"/"+p.Name] = cmp.Or(p.Spec.ServiceAccountName, "default")
		}
	}
	helloID := "spiffe://" + labTrustDomain + "/ns/sample/sa/default"
	seen := 0
	for _, px := range em.Proxies() {
		if px.Namespace != "sample" {
			continue
		}
		want := "spiffe://" + labTrustDomain + "/ns/sample/sa/" + accounts[px.Cluster+"/"+px.Pod]
		if px.Cert == nil {
			t.Errorf("%s: pod sample/%s: no certificate from istiod: %+v", px.Cluster, px.Pod, px)
			continue
		}
		seen++
		var uris []string
		for _, u := range px.Cert.URIs {
			uris = append(uris, u.String())
		}
		t.Logf("%s: pod sample/%s: certificate from %s (issuer %q): URIs %v; istiod's SANs for helloworld %v", px.Cluster, px.Pod, px.Istiod, px.Cert.Issuer, uris, px.SANs[helloCluster])
		if !slices.Equal(uris, []string{want}) {
			t.Errorf("%s: pod sample/%s: certificate URIs %v, want [%s]", px.Cluster, px.Pod, uris, want)
		}
		if !slices.Equal(px.SANs[helloCluster], []string{helloID}) {
			t.Errorf("%s: pod sample/%s: istiod's SANs for %s: %v, want [%s]", px.Cluster, px.Pod, helloCluster, px.SANs[helloCluster], helloID)
		}
	}
	if seen < 4 {
		t.Errorf("%d sample proxies with certificates, want the curl and helloworld pods of both clusters", seen)
	}

	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]bool{}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		}
		if c.Name == "istiod issues the mesh's trust domain" {
			read[c.Cluster] = true
			t.Logf("check %s [%s]: %s", c.Name, c.Cluster, c.Message)
		}
	}
	for _, c := range []string{"east", "west"} {
		if !read[c] {
			t.Errorf("check did not read istiod's trust domain in %s", c)
		}
	}

	// Negative control: with the lab back on cluster.local, checking the
	// flotilla.example spec finds each istiod issuing cluster.local.
	removeSample(t, l)
	restoreTrustDomain(t, l, h)
	restored = true
	checks, err = h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for _, c := range checks {
		if c.Name == "istiod issues the mesh's trust domain" || c.Name == "Istio resource consistent" {
			t.Logf("against cluster.local: check %s [%s]: ok %v: %s", c.Name, c.Cluster, c.OK, c.Message)
			if !c.OK && strings.Contains(c.Message, "cluster.local") {
				failed[c.Name+" ["+c.Cluster+"]"] = true
			}
		}
	}
	for _, name := range []string{"istiod issues the mesh's trust domain", "Istio resource consistent"} {
		for _, c := range []string{"east", "west"} {
			if !failed[name+" ["+c+"]"] {
				t.Errorf("check %q [%s] did not fail naming cluster.local while istiod runs on it (failed: %v)", name, c, failed)
			}
		}
	}
}

// multiPrimaryDoc is applyMultiPrimary's spec with extra lines under spec.
func multiPrimaryDoc(l *lab.Lab, extra string) string {
	return fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
%[2]s  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig, extra)
}

// waitIstiodTrustDomain waits for istiod's active mesh config to name td:
// istiod reloads its mesh config file when the chart re-renders it.
func waitIstiodTrustDomain(t *testing.T, ctx context.Context, cluster string, in lab.IstiodInfo, td string) {
	t.Helper()
	var mesh struct {
		TrustDomain string `json:"trustDomain"`
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := getJSON(ctx, in.Address, "/debug/mesh", &mesh); err != nil {
			return false, nil
		}
		return mesh.TrustDomain == td, nil
	})
	if err != nil {
		t.Fatalf("%s: istiod's /debug/mesh trustDomain %q, want %q", cluster, mesh.TrustDomain, td)
	}
}

// restoreTrustDomain applies the package's usual mesh (cluster.local) with
// the test's hub (which holds the lab's state) and waits until every istiod
// runs with it again.
func restoreTrustDomain(t *testing.T, l *lab.Lab, h *server.Hub) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := spec.Parse("mesh.yaml", []byte(multiPrimaryDoc(l, "")))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		t.Fatalf("restore cluster.local: %v", err)
	}
	for _, c := range l.Clusters() {
		waitIstiodTrustDomain(t, ctx, c.Name, waitIstiodReady(t, ctx, c), "cluster.local")
	}
}
