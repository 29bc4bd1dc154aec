package realistio

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// ambLab runs one cluster in ambient mode (its own: the Sail resources
// here are written by hand, not by flotilla).
var ambLab = lab.NewSharedWith(lab.Options{Clusters: []string{"amb"}, RealIstio: true})

var (
	istioCNIGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istiocnis"}
	ztunnelGVR  = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "ztunnels"}
)

// hiddenLabel marks a namespace istiod does not discover (the Istio
// resource's meshConfig.discoverySelectors leave it out).
const hiddenLabel = "lab.flotilla.dev/hidden-from-istiod"

// TestAmbientSingleCluster installs Istio in ambient mode through the lab's
// Sail Operator (Istio and IstioCNI with profile ambient, ZTunnel default in
// its own namespace) and sends helloworld requests from an ambient client
// pod: the emulator's ztunnel takes its workload view from real istiod's
// WDS, its certificates from istiod's CA by impersonation, and carries the
// requests over HBONE. A client in a namespace istiod does not discover
// (labelled ambient all the same) is refused as an unknown source, though
// Kubernetes lists helloworld's endpoint: nothing is read around istiod.
func TestAmbientSingleCluster(t *testing.T) {
	l := ambLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := l.Cluster("amb")
	kc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	cs := kc.Kube
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{
		{"istio-system", nil},
		{"istio-cni", nil},
		{"ztunnel", nil},
		{"sample", map[string]string{"istio.io/dataplane-mode": "ambient"}},
		{"hidden", map[string]string{"istio.io/dataplane-mode": "ambient", hiddenLabel: "true"}},
	} {
		createNamespace(t, ctx, cs, ns.name, ns.labels)
	}
	applySail(t, ctx, kc, "Istio", map[string]any{
		"namespace": "istio-system", "profile": "ambient", "version": "v1.30.3",
		"values": map[string]any{
			// ztunnel runs in its own namespace: istiod must trust it to
			// ask for its workloads' certificates (CA_TRUSTED_NODE_ACCOUNTS).
			"pilot": map[string]any{"trustedZtunnelNamespace": "ztunnel"},
			"meshConfig": map[string]any{"discoverySelectors": []any{map[string]any{
				"matchExpressions": []any{map[string]any{"key": hiddenLabel, "operator": "DoesNotExist"}},
			}}},
		},
	})
	applySail(t, ctx, kc, "IstioCNI", map[string]any{"namespace": "istio-cni", "profile": "ambient", "version": "v1.30.3"})
	applySail(t, ctx, kc, "ZTunnel", map[string]any{"namespace": "ztunnel", "version": "v1.30.3"})
	logs := startEmulatorLogged(t, l)

	waitReconciled(t, ctx, kc, c, "default")
	in := waitIstiodReady(t, ctx, c)
	for _, rel := range []struct{ ns, name string }{
		{"istio-system", "default-istiod"}, {lab.OperatorNamespace, "default-base"}, {"istio-cni", "istio-cni"}, {"ztunnel", "ztunnel"},
	} {
		if got := releaseStatus(t, ctx, kc, rel.ns, rel.name); got != "deployed" {
			t.Errorf("Helm release %s/%s: %s, want deployed", rel.ns, rel.name, got)
		}
	}
	// What the charts' ambient profile gives istiod and ztunnel.
	dep, err := cs.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	for k, want := range map[string]string{"PILOT_ENABLE_AMBIENT": "true", "CA_TRUSTED_NODE_ACCOUNTS": "ztunnel/ztunnel"} {
		if env[k] != want {
			t.Errorf("istiod env %s = %q, want %q", k, env[k], want)
		}
	}
	if _, err := cs.AppsV1().DaemonSets("istio-cni").Get(ctx, "istio-cni-node", metav1.GetOptions{}); err != nil {
		t.Errorf("istio-cni DaemonSet: %v", err)
	}
	// ZTunnel turns Ready once its DaemonSet's pod is: once the emulator's
	// ztunnel got istiod's workload view.
	waitSailReady(t, ctx, kc, ztunnelGVR, "default")
	t.Logf("istiod %s ready; ZTunnel default Ready", in.Address)

	createHelloworld(t, ctx, cs, "sample", "v1")
	client := createCurl(t, ctx, cs, "sample")
	// istio-cni (played by the emulator) handed it to ztunnel before it
	// turned ready; istiod reads this annotation for tunnel protocol HBONE.
	if got := client.Annotations["ambient.istio.io/redirection"]; got != "enabled" {
		t.Errorf("ready ambient pod sample/curl: annotation ambient.istio.io/redirection = %q, want enabled", got)
	}
	hidden := createCurl(t, ctx, cs, "hidden")
	capture := func(p *corev1.Pod) string {
		addr, ok := lab.PodCaptureAddress(net.ParseIP(p.Status.PodIP))
		if !ok {
			t.Fatalf("pod %s/%s: no capture address for %s", p.Namespace, p.Name, p.Status.PodIP)
		}
		return addr
	}
	var last string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		last, err = hello(ctx, capture(client))
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("helloworld never answered the ambient client: %s", last)
	}
	const n = 20
	failed := 0
	for range n {
		if body, err := hello(ctx, capture(client)); err != nil || !strings.Contains(body, "Hello version: v1") {
			failed++
			t.Logf("request failed: %v %s", err, body)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed", failed, n)
	}
	t.Logf("%d requests from sample/%s answered: %s", n, client.Name, strings.TrimSpace(last))

	// The emulator's log shows where the view and the certificates came from.
	for _, want := range []string{
		"WDS from istiod " + in.Address + ":15012",
		"workload sample/helloworld-v1 ",
		"service sample/helloworld.sample.svc.cluster.local",
		"certificate for spiffe://cluster.local/ns/sample/sa/default from istiod's CA (impersonated)",
		"-> helloworld.sample.svc.cluster.local: workload sample/helloworld-v1 via HBONE",
	} {
		if !logs.contains(want) {
			t.Errorf("the emulator's log never says %q", want)
		}
	}

	// Negative control: Kubernetes has helloworld's endpoint for anyone,
	// but istiod does not see the hidden namespace, so its client is no
	// workload of istiod's view and ztunnel refuses it.
	if err := waitEndpoint(ctx, cs, "sample", "helloworld"); err != nil {
		t.Fatal(err)
	}
	if body, err := hello(ctx, capture(hidden)); err == nil {
		t.Errorf("a client istiod does not know was answered: %s", body)
	} else {
		t.Logf("client in hidden namespace: %v", err)
	}
	if !logs.contains("hidden/" + hidden.Name + " -> helloworld.sample:5000: unknown source") {
		t.Errorf("the emulator's log never says the hidden client is an unknown source")
	}
}

// hello sends GET /hello to helloworld.sample:5000 as the pod whose capture
// address is capture (as curl in that pod would through kwok's Exec).
func hello(ctx context.Context, capture string) (string, error) {
	return helloAt(ctx, capture, "helloworld.sample:5000")
}

// helloAt sends GET /hello to hostPort as the pod whose capture address is
// capture.
func helloAt(ctx context.Context, capture, hostPort string) (string, error) {
	proxy, _ := url.Parse("http://" + capture)
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy), DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort+"/hello", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

func createNamespace(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// applySail creates the Sail resource kind named default with spec, or
// merges spec into the one that exists.
func applySail(t *testing.T, ctx context.Context, kc *kube.Cluster, kind string, spec map[string]any) {
	t.Helper()
	gvr := map[string]schema.GroupVersionResource{"Istio": istioGVR, "IstioCNI": istioCNIGVR, "ZTunnel": ztunnelGVR}[kind]
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sailoperator.io/v1", "kind": kind,
		"metadata": map[string]any{"name": "default"},
		"spec":     spec,
	}}
	_, err := kc.Dynamic.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// flotilla wrote it (a sidecar mesh's IstioCNI): change its spec.
		patch, _ := json.Marshal(map[string]any{"spec": spec})
		_, err = kc.Dynamic.Resource(gvr).Patch(ctx, "default", types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if err != nil {
		t.Fatalf("%s: write %s default: %v", kc.Name, kind, err)
	}
}

// waitSailReady waits for a Sail resource's Ready condition.
func waitSailReady(t *testing.T, ctx context.Context, kc *kube.Cluster, gvr schema.GroupVersionResource, name string) {
	t.Helper()
	var msg string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := kc.Dynamic.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, co := range conds {
			cm, _ := co.(map[string]any)
			if cm["type"] == "Ready" {
				msg = fmt.Sprint(cm["reason"], ": ", cm["message"])
				return cm["status"] == "True", nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%s %s not Ready: %s", gvr.Resource, name, msg)
	}
}

func createHelloworld(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, version string) {
	t.Helper()
	labels := map[string]string{"app": "helloworld"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "helloworld", Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 5000, TargetPort: intstr.FromInt32(5000)},
		}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service %s/helloworld: %v", ns, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "helloworld-" + version, Namespace: ns, Labels: map[string]string{"app": "helloworld", "version": version}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "helloworld", Image: "docker.io/istio/examples-helloworld-" + version + ":1.0",
			Ports: []corev1.ContainerPort{{ContainerPort: 5000}},
		}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
	}
	waitPodReady(t, ctx, cs, ns, pod.Name)
}

func createCurl(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "curl", Namespace: ns, Labels: map[string]string{"app": "curl"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "curl", Image: "curlimages/curl:8.16.0", Command: []string{"sleep", "infinity"},
		}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/curl: %v", ns, err)
	}
	return waitPodReady(t, ctx, cs, ns, pod.Name)
}

func waitPodReady(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not ready: %+v", ns, name, p.Status)
	}
	return p
}

// waitEndpoint waits for a ready endpoint of a Service in its EndpointSlices.
func waitEndpoint(ctx context.Context, cs kubernetes.Interface, ns, svc string) error {
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		sls, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
		if err != nil {
			return false, nil
		}
		for _, sl := range sls.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					return true, nil
				}
			}
		}
		return false, nil
	})
}
