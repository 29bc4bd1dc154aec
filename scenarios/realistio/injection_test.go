package realistio

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// sidecarStatusAnnotation is what Istio's injector writes on every pod it
// injects (the injected containers, volumes and image pull secrets).
const sidecarStatusAnnotation = "sidecar.istio.io/status"

// TestInjectionWebhook creates pods through the API server of a lab
// cluster running real Istio and checks that the admission chain, not a
// model of it, decides their sidecar. The charts render a
// MutatingWebhookConfiguration per revision (istio-sidecar-injector, and
// istio-sidecar-injector-<rev> for another revision: service
// istio-system/istiod[-<rev>] port 443, path /inject, failurePolicy Fail,
// no caBundle); each revision's istiod patches its configuration's caBundle
// with the root of its CA, here the plug-in root from cacerts. The API
// server resolves the Service to its ClusterIP and dials it through its
// "cluster" egress selector, the lab's CONNECT proxy, which forwards to a
// ready endpoint of the Service (istiod's pod) at target port 15017, on the
// pod's loopback stand-in where the lab bound istiod's --httpsAddr.
//
// Each case's namespace and pod labels are matched against the charts'
// webhooks as the API server matches them; a selected pod must come back
// injected by its revision's istiod (istio-proxy, status annotation naming
// the revision) and count one injection request in that istiod's own
// metrics and none in any other; an unselected one must come back as it
// was sent and cost every istiod nothing. The negative control is the pod
// in a namespace without the injection label.
func TestInjectionWebhook(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	applyMultiPrimary(t, ctx, l)

	c := l.Cluster("east")
	kc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	waitReconciled(t, ctx, kc, c, "default")
	waitIstiodReady(t, ctx, c)
	cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
	if err != nil || cc == nil {
		t.Fatalf("%s: cacerts: %v", c.Name, err)
	}
	inj := &injection{c: c, kc: kc, root: bytes.TrimSpace(cc.CACerts.RootCert)}

	t.Run("default", func(t *testing.T) {
		inj.refresh(t, ctx, 1)
		inj.run(t, ctx, []injectCase{
			{ns: "inject-label", nsLabels: map[string]string{"istio-injection": "enabled"}, webhook: "istio-sidecar-injector/namespace.sidecar-injector.istio.io", revision: "default"},
			{ns: "inject-rev", nsLabels: map[string]string{"istio.io/rev": "default"}, webhook: "istio-sidecar-injector/rev.namespace.sidecar-injector.istio.io", revision: "default"},
			{ns: "inject-pod-rev", podLabels: map[string]string{"istio.io/rev": "default"}, webhook: "istio-sidecar-injector/rev.object.sidecar-injector.istio.io", revision: "default"},
			{ns: "inject-opt-out", nsLabels: map[string]string{"istio-injection": "enabled"}, podLabels: map[string]string{"sidecar.istio.io/inject": "false"}},
			{ns: "inject-none"}, // the negative control: no injection label
		})
	})

	// A second revision beside the default one, as a canary upgrade has:
	// the Istio resource's spec copied under another name. Its webhooks
	// select only istio.io/rev=canary; istio-injection=enabled stays with
	// the default revision.
	t.Run("canary", func(t *testing.T) {
		def, err := kc.Dynamic.Resource(istioGVR).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: Istio default: %v", c.Name, err)
		}
		canary := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": def.GetAPIVersion(), "kind": def.GetKind(),
			"metadata": map[string]any{"name": "canary"},
			"spec":     def.Object["spec"],
		}}
		if _, err := kc.Dynamic.Resource(istioGVR).Create(ctx, canary, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: create Istio canary: %v", c.Name, err)
		}
		t.Cleanup(func() { removeIstio(t, kc, c, "canary") })
		waitReconciled(t, ctx, kc, c, "canary")
		inj.refresh(t, ctx, 2)
		inj.run(t, ctx, []injectCase{
			{ns: "canary-rev", nsLabels: map[string]string{"istio.io/rev": "canary"}, webhook: "istio-sidecar-injector-canary/rev.namespace.sidecar-injector.istio.io", revision: "canary"},
			{ns: "canary-pod-rev", podLabels: map[string]string{"istio.io/rev": "canary"}, webhook: "istio-sidecar-injector-canary/rev.object.sidecar-injector.istio.io", revision: "canary"},
			{ns: "canary-label", nsLabels: map[string]string{"istio-injection": "enabled"}, webhook: "istio-sidecar-injector/namespace.sidecar-injector.istio.io", revision: "default"},
			{ns: "canary-none"},
		})
	})
}

// injectCase is one pod to create: its namespace's and its own labels, and
// the webhook (configuration/name) and revision that must inject it; ""
// for a pod no webhook selects.
type injectCase struct {
	ns                  string
	nsLabels, podLabels map[string]string
	webhook, revision   string
}

// injection is what the cases check against: the cluster's injector
// webhooks and its istiods by revision.
type injection struct {
	c       *lab.Cluster
	kc      *kube.Cluster
	root    []byte
	hooks   []namedWebhook
	istiods map[string]lab.IstiodInfo
}

type namedWebhook struct {
	name string // configuration/webhook
	admissionregistrationv1.MutatingWebhook
}

// refresh waits for n ready istiods and for every injector webhook to
// carry the mesh root as its caBundle, patched by istiod.
func (inj *injection) refresh(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	inj.istiods = waitIstiodRevisions(t, ctx, inj.kc, inj.c, n)
	inj.hooks = waitInjectorCABundle(t, ctx, inj.kc.Kube, inj.c.Name)
	services := map[string]bool{}
	for _, h := range inj.hooks {
		if !bytes.Contains(h.ClientConfig.CABundle, inj.root) {
			t.Errorf("%s: webhook %s: caBundle is not cacerts' root-cert.pem:\n%s", inj.c.Name, h.name, h.ClientConfig.CABundle)
		}
		if svc := h.ClientConfig.Service; svc != nil && !services[svc.Namespace+"/"+svc.Name] {
			services[svc.Namespace+"/"+svc.Name] = true
			waitServiceEndpoint(t, ctx, inj.kc.Kube, inj.c.Name, svc.Namespace, svc.Name)
		}
	}
}

// waitServiceEndpoint waits for a Service to have a ready endpoint: until
// the endpointslice controller has seen istiod's pod Ready, the API server
// has nowhere to send a webhook call (in a real cluster as in the lab) and,
// the charts' failurePolicy being Fail, refuses the pod.
func waitServiceEndpoint(t *testing.T, ctx context.Context, cs kubernetes.Interface, cluster, ns, name string) {
	t.Helper()
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
		if err != nil {
			return false, nil
		}
		for _, es := range slices.Items {
			for _, ep := range es.Endpoints {
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					return len(ep.Addresses) > 0, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%s: service %s/%s has no ready endpoint: %v", cluster, ns, name, err)
	}
	t.Logf("%s: service %s/%s has a ready endpoint (waited %s)", cluster, ns, name, time.Since(start).Round(10*time.Millisecond))
}

func (inj *injection) counts(t *testing.T, ctx context.Context) map[string]injected {
	t.Helper()
	out := map[string]injected{}
	for rev, in := range inj.istiods {
		out[rev] = injectionCounts(t, ctx, inj.c.Name, in.Address)
	}
	return out
}

func (inj *injection) run(t *testing.T, ctx context.Context, cases []injectCase) {
	t.Helper()
	c, kc := inj.c, inj.kc
	for _, tc := range cases {
		t.Run(tc.ns, func(t *testing.T) {
			podLabels := map[string]string{"app": "sleep"}
			for k, v := range tc.podLabels {
				podLabels[k] = v
			}
			names := selectingWebhooks(inj.hooks, tc.nsLabels, podLabels)
			want := []string{}
			if tc.webhook != "" {
				want = []string{tc.webhook}
			}
			if strings.Join(names, ",") != strings.Join(want, ",") {
				t.Fatalf("%s: namespace labels %v, pod labels %v: selected by webhooks %v, want %v", c.Name, tc.nsLabels, podLabels, names, want)
			}
			before := inj.counts(t, ctx)
			pod := createPod(t, ctx, kc.Kube, c.Name, tc.ns, tc.nsLabels, podLabels)
			after := inj.counts(t, ctx)
			desc := fmt.Sprintf("%s: pod %s/%s (namespace labels %v, pod labels %v): containers %v, init containers %v, annotations %v",
				c.Name, pod.Namespace, pod.Name, tc.nsLabels, podLabels,
				containerNames(pod.Spec.Containers), containerNames(pod.Spec.InitContainers), pod.Annotations)
			for rev, b := range before {
				a, w := after[rev], b
				if rev == tc.revision {
					w = injected{requests: b.requests + 1, success: b.success + 1}
				}
				if a != w {
					t.Errorf("%s: istiod %s (revision %s) injection counters went from %+v to %+v, want %+v", desc, inj.istiods[rev].Pod, rev, b, a, w)
				}
			}
			if tc.webhook == "" {
				if istioProxy(pod) != "" || pod.Annotations[sidecarStatusAnnotation] != "" {
					t.Errorf("%s: injected, want no sidecar", desc)
				}
				t.Logf("not injected: %s", desc)
				return
			}
			status := pod.Annotations[sidecarStatusAnnotation]
			if istioProxy(pod) == "" || !strings.Contains(status, fmt.Sprintf(`"revision":%q`, tc.revision)) {
				t.Fatalf("%s: not injected by revision %s (istiod log %s)", desc, tc.revision, inj.istiods[tc.revision].Log)
			}
			// istiod gives native sidecars when every node's kubelet is
			// 1.33 or later (ENABLE_NATIVE_SIDECARS=auto), as the lab's
			// 1.36 node is.
			if got := istioProxy(pod); got != nativeSidecar {
				nodes, _ := kc.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
				var versions []string
				for _, n := range nodes.Items {
					versions = append(versions, n.Name+"="+n.Status.NodeInfo.KubeletVersion)
				}
				t.Errorf("%s: istio-proxy injected as a %s, want a native sidecar (kubelet versions %v)", desc, got, versions)
			}
			t.Logf("injected by %s: %s", tc.webhook, desc)
		})
	}
}

// waitIstiodRevisions waits for n ready istiods in the cluster and returns
// them by their pod's revision label (istio.io/rev).
func waitIstiodRevisions(t *testing.T, ctx context.Context, kc *kube.Cluster, c *lab.Cluster, n int) map[string]lab.IstiodInfo {
	t.Helper()
	var got []lab.IstiodInfo
	out := map[string]lab.IstiodInfo{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		got = c.Istiods()
		clear(out)
		for _, in := range got {
			if in.Ready.IsZero() {
				return false, nil
			}
			pod, err := kc.Kube.CoreV1().Pods(in.Namespace).Get(ctx, in.Pod, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			out[pod.Labels["istio.io/rev"]] = in
		}
		return len(got) == n && len(out) == n, nil
	})
	if err != nil {
		t.Fatalf("%s: want %d ready istiods of distinct revisions, have %+v (logs in %s)", c.Name, n, got, filepath.Dir(c.Log("sail-lab")))
	}
	return out
}

// removeIstio deletes an Istio resource and waits for the lab's Sail
// Operator to uninstall its release and for its istiod to stop, so that the
// shared lab is left with the default revision alone.
func removeIstio(t *testing.T, kc *kube.Cluster, c *lab.Cluster, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := kc.Dynamic.Resource(istioGVR).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("%s: delete Istio %s: %v", c.Name, name, err)
		return
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := kc.Dynamic.Resource(istioGVR).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) && len(c.Istiods()) == 1, nil
	})
	if err != nil {
		t.Errorf("%s: Istio %s not removed (istiods %+v): %v", c.Name, name, c.Istiods(), err)
	}
}

// injected counts what istiod's injection webhook served, from its own
// metrics (sidecar_injection_requests_total, sidecar_injection_success_total);
// a counter not yet incremented is not exported and counts zero.
type injected struct{ requests, success float64 }

func injectionCounts(t *testing.T, ctx context.Context, cluster, addr string) injected {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, "15014")+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: istiod metrics at %s: %v", cluster, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: istiod metrics at %s: %s", cluster, addr, resp.Status)
	}
	var got injected
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		name, _, _ = strings.Cut(name, "{")
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		switch name {
		case "sidecar_injection_requests_total":
			got.requests += v
		case "sidecar_injection_success_total":
			got.success += v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: istiod metrics at %s: %v", cluster, addr, err)
	}
	return got
}

// waitInjectorCABundle waits for the sidecar injector webhooks the charts
// rendered for every revision to carry a caBundle: the chart leaves it
// empty and the revision's istiod patches in the CA that signs its serving
// certificate. It returns those webhooks, named configuration/webhook.
func waitInjectorCABundle(t *testing.T, ctx context.Context, cs kubernetes.Interface, cluster string) []namedWebhook {
	t.Helper()
	var hooks []namedWebhook
	var missing, caWriters []string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: "app=sidecar-injector"})
		if err != nil {
			return false, nil
		}
		hooks, missing, caWriters = nil, nil, nil
		for _, mwc := range list.Items {
			for _, mf := range mwc.ManagedFields {
				if mf.FieldsV1 != nil && bytes.Contains(mf.FieldsV1.Raw, []byte(`"f:caBundle"`)) {
					caWriters = append(caWriters, mwc.Name+": "+mf.Manager)
				}
			}
			for _, h := range mwc.Webhooks {
				hooks = append(hooks, namedWebhook{name: mwc.Name + "/" + h.Name, MutatingWebhook: h})
				if len(h.ClientConfig.CABundle) == 0 {
					missing = append(missing, mwc.Name+"/"+h.Name)
				}
			}
		}
		return len(hooks) > 0 && len(missing) == 0, nil
	})
	if err != nil {
		t.Fatalf("%s: sidecar injector webhooks (app=sidecar-injector): %d found, without caBundle %v: %v", cluster, len(hooks), missing, err)
	}
	// The chart renders no caBundle: the field's only owner is istiod
	// (field manager pilot-discovery), whose webhook controller patched it.
	for _, w := range caWriters {
		if _, manager, _ := strings.Cut(w, ": "); manager != "pilot-discovery" {
			t.Errorf("%s: caBundle of sidecar injector webhook configuration %s, want pilot-discovery only", cluster, w)
		}
	}
	if len(caWriters) == 0 {
		t.Errorf("%s: no field manager owns the sidecar injector webhooks' caBundle", cluster)
	}
	t.Logf("%s: sidecar injector caBundle written by %v", cluster, caWriters)
	return hooks
}

// selectingWebhooks names the webhooks whose namespace selector matches a
// namespace with these labels and whose object selector matches a pod with
// these, as the API server decides which webhooks to call.
func selectingWebhooks(hooks []namedWebhook, nsLabels, podLabels map[string]string) []string {
	out := []string{}
	for _, h := range hooks {
		if matches(h.NamespaceSelector, nsLabels) && matches(h.ObjectSelector, podLabels) {
			out = append(out, h.name)
		}
	}
	return out
}

func matches(ls *metav1.LabelSelector, set map[string]string) bool {
	if ls == nil {
		return true
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	return err == nil && sel.Matches(labels.Set(set))
}

// createPod creates a namespace named after ns (a generated suffix keeps a
// rerun in the same lab clear of the last run's terminating namespaces)
// with the given labels and a plain pod with podLabels in it, and returns
// the pod as the API server stored it. The namespace is deleted at the end
// of the test.
func createPod(t *testing.T, ctx context.Context, cs kubernetes.Interface, cluster, ns string, nsLabels, podLabels map[string]string) *corev1.Pod {
	t.Helper()
	created, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: ns + "-", Labels: nsLabels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("%s: create namespace %s-*: %v", cluster, ns, err)
	}
	ns = created.Name
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("%s: delete namespace %s: %v", cluster, ns, err)
		}
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleep", Namespace: ns, Labels: podLabels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "sleep", Image: "docker.io/curlimages/curl:8.16.0", Command: []string{"/bin/sleep", "infinity"},
		}}},
	}
	var got *corev1.Pod
	var last error
	// The namespace's default service account comes from the controller
	// manager; until it exists the API server refuses the pod.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil {
			got = p
			return true, nil
		}
		last = err
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "serviceaccount") {
			return false, nil
		}
		return false, err
	})
	if err != nil {
		if last != nil && !errors.Is(err, last) {
			err = fmt.Errorf("%w (last: %v)", err, last)
		}
		t.Fatalf("%s: create pod %s/%s: %v", cluster, ns, pod.Name, err)
	}
	return got
}

// How the injected proxy runs: as a plain container, or as a native
// sidecar (an init container that restarts always).
const (
	plainContainer = "container"
	nativeSidecar  = "native sidecar"
)

// istioProxy says how pod carries the istio-proxy container, "" if not at all.
func istioProxy(p *corev1.Pod) string {
	for _, c := range p.Spec.Containers {
		if c.Name == "istio-proxy" {
			return plainContainer
		}
	}
	for _, c := range p.Spec.InitContainers {
		if c.Name == "istio-proxy" && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return nativeSidecar
		}
	}
	return ""
}

func containerNames(cs []corev1.Container) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
