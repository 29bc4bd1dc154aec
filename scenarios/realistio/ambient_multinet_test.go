package realistio

import (
	"context"
	"fmt"
	"net"
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

// ambNetLab runs two clusters on two networks for ambient multi-network.
var ambNetLab = lab.NewSharedWith(lab.Options{Clusters: []string{"amb-east", "amb-west"}, RealIstio: true})

var gatewayGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}

// TestAmbientMultiNetwork: two primaries on two networks in ambient mode.
// flotilla applies a multi-primary mesh (shared root, cacerts, remote
// secrets, network labels); the test then turns each cluster's Istio to the
// ambient profile with AMBIENT_ENABLE_MULTI_NETWORK, adds IstioCNI, ZTunnel
// (clusterName, network) and the east-west gateway as a Gateway API Gateway
// of class istio-east-west with the HBONE listener on 15008, all by hand.
// helloworld v1 runs in amb-east, v2 in amb-west, its Service global
// (istio.io/global=true) in both: istiod's WDS gives each ztunnel the other
// network's workloads behind that network's gateway, and the emulator
// carries requests over double HBONE through it; both versions answer from
// each side. A Service without istio.io/global answers only locally.
func TestAmbientMultiNetwork(t *testing.T) {
	l := ambNetLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: amb-east, context: amb-east, network: network1, kubeconfig: %[1]s}
  - {name: amb-west, context: amb-west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig)
	applyDoc(t, ctx, l, doc)
	logs := startEmulatorLogged(t, l)

	nets := map[string]string{"amb-east": "network1", "amb-west": "network2"}
	versions := map[string]string{"amb-east": "v1", "amb-west": "v2"}
	conns := map[string]*kube.Cluster{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		conns[c.Name] = kc
		toAmbient(t, ctx, kc, c.Name, nets[c.Name])
	}
	istiods := map[string]lab.IstiodInfo{}
	for _, c := range l.Clusters() {
		kc := conns[c.Name]
		waitReconciled(t, ctx, kc, c, "default")
		istiods[c.Name] = waitIstiodReady(t, ctx, c)
		waitSailReady(t, ctx, kc, ztunnelGVR, "default")
		addr := waitGatewayAddress(t, ctx, kc, "istio-system", "istio-eastwestgateway")
		t.Logf("%s: east-west Gateway address %s", c.Name, addr)
	}
	clients := map[string]*corev1.Pod{}
	for _, c := range l.Clusters() {
		cs := conns[c.Name].Kube
		createNamespace(t, ctx, cs, "sample", map[string]string{"istio.io/dataplane-mode": "ambient"})
		createHelloworld(t, ctx, cs, "sample", versions[c.Name])
		labelGlobal(t, ctx, cs, "sample", "helloworld")
		createService(t, ctx, cs, "sample", "helloworld-local", map[string]string{"app": "helloworld"})
		clients[c.Name] = createCurl(t, ctx, cs, "sample")
	}

	for _, c := range l.Clusters() {
		capture, ok := lab.PodCaptureAddress(net.ParseIP(clients[c.Name].Status.PodIP))
		if !ok {
			t.Fatalf("%s: no capture address", c.Name)
		}
		seen := map[string]int{}
		failed := 0
		var errs []string
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			body, err := helloAt(ctx, capture, "helloworld.sample:5000")
			if err != nil {
				errs = append(errs, err.Error())
				return false, nil
			}
			seen[helloVersionOf(body)]++
			return seen["v1"] > 0 && seen["v2"] > 0, nil
		})
		if err != nil {
			t.Fatalf("%s: both versions never answered (seen %v, last errors %v)", c.Name, seen, tail(errs, 3))
		}
		const n = 20
		seen = map[string]int{}
		for range n {
			body, err := helloAt(ctx, capture, "helloworld.sample:5000")
			if err != nil {
				failed++
				t.Logf("%s: %v", c.Name, err)
				continue
			}
			seen[helloVersionOf(body)]++
		}
		if failed > 0 || seen["v1"] == 0 || seen["v2"] == 0 {
			t.Errorf("%s: %d of %d requests failed, versions %v", c.Name, failed, n, seen)
		}
		t.Logf("%s: %d requests to the global helloworld: %v, %d failed", c.Name, n, seen, failed)

		local := map[string]int{}
		for range 10 {
			body, err := helloAt(ctx, capture, "helloworld-local.sample:5000")
			if err != nil {
				t.Errorf("%s: helloworld-local: %v", c.Name, err)
				continue
			}
			local[helloVersionOf(body)]++
		}
		if len(local) != 1 || local[versions[c.Name]] != 10 {
			t.Errorf("%s: helloworld-local (no istio.io/global) answered %v, want only the local %s", c.Name, local, versions[c.Name])
		}
	}
	// istiod's WDS gave each ztunnel the other network's helloworld as one
	// coalesced workload behind that network's gateway.
	for _, want := range []string{
		"workload sample/network2/SplitHorizonWorkload/istio-system/istio-eastwestgateway/",
		"workload sample/network1/SplitHorizonWorkload/istio-system/istio-eastwestgateway/",
		"network gateway network2/", "network gateway network1/",
		"via double HBONE, network gateway", "east-west gateway amb-west/istio-system/istio-eastwestgateway: CONNECT helloworld.sample.svc.cluster.local:5000 -> workload sample/helloworld-v2", "east-west gateway amb-east/istio-system/istio-eastwestgateway: CONNECT helloworld.sample.svc.cluster.local:5000 -> workload sample/helloworld-v1"} {
		if !logs.contains(want) {
			t.Errorf("the emulator's log never says %q", want)
		}
	}
}

// toAmbient turns the cluster's Istio default to the ambient profile with
// ambient multi-network on, and adds IstioCNI, ZTunnel and the east-west
// Gateway, as Istio's ambient multi-network guide has them.
func toAmbient(t *testing.T, ctx context.Context, kc *kube.Cluster, cluster, network string) {
	t.Helper()
	patch := `{"spec":{"profile":"ambient","values":{"pilot":{"trustedZtunnelNamespace":"ztunnel","env":{"AMBIENT_ENABLE_MULTI_NETWORK":"true"}}}}}`
	if _, err := kc.Dynamic.Resource(istioGVR).Patch(ctx, "default", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("%s: patch Istio default: %v", cluster, err)
	}
	createNamespace(t, ctx, kc.Kube, "istio-cni", nil)
	createNamespace(t, ctx, kc.Kube, "ztunnel", nil)
	applySail(t, ctx, kc, "IstioCNI", map[string]any{"namespace": "istio-cni", "profile": "ambient", "version": "v1.30.3"})
	applySail(t, ctx, kc, "ZTunnel", map[string]any{"namespace": "ztunnel", "version": "v1.30.3", "values": map[string]any{
		// Sail's ZTunnel takes the network in values.ztunnel (its
		// values.global has no network: the API server drops one there).
		"ztunnel": map[string]any{"network": network, "multiCluster": map[string]any{"clusterName": cluster}},
	}})
	// The sidecar mesh's classic east-west gateway has the name the ambient
	// one takes (istiod's deployment controller names the Deployment and
	// Service after the Gateway): an ambient cluster has only the latter.
	if err := kc.Kube.AppsV1().Deployments("istio-system").Delete(ctx, "istio-eastwestgateway", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("%s: delete the classic east-west gateway: %v", cluster, err)
	}
	if err := kc.Kube.CoreV1().Services("istio-system").Delete(ctx, "istio-eastwestgateway", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("%s: delete the classic east-west gateway's Service: %v", cluster, err)
	}
	gw := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": "istio-eastwestgateway", "namespace": "istio-system",
			"labels": map[string]any{"topology.istio.io/network": network}},
		"spec": map[string]any{
			"gatewayClassName": "istio-east-west",
			"listeners": []any{map[string]any{
				"name": "mesh", "port": int64(15008), "protocol": "HBONE",
				"tls": map[string]any{"mode": "Terminate", "options": map[string]any{"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}},
			}},
		},
	}}
	if _, err := kc.Dynamic.Resource(gatewayGVR).Namespace("istio-system").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s: create Gateway istio-system/istio-eastwestgateway: %v", cluster, err)
	}
}

// waitGatewayAddress waits for a Gateway's status address (istiod writes it
// from the Service its deployment controller made).
func waitGatewayAddress(t *testing.T, ctx context.Context, kc *kube.Cluster, ns, name string) string {
	t.Helper()
	var addr string
	var last *unstructured.Unstructured
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := kc.Dynamic.Resource(gatewayGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = u
		addrs, _, _ := unstructured.NestedSlice(u.Object, "status", "addresses")
		for _, a := range addrs {
			if m, ok := a.(map[string]any); ok {
				addr, _ = m["value"].(string)
			}
		}
		return addr != "", nil
	})
	if err != nil {
		st := any(nil)
		if last != nil {
			st = last.Object["status"]
		}
		t.Fatalf("%s: Gateway %s/%s has no address: %v", kc.Name, ns, name, st)
	}
	return addr
}

func labelGlobal(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	patch := `{"metadata":{"labels":{"istio.io/global":"true"}}}`
	if _, err := cs.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("label service %s/%s global: %v", ns, name, err)
	}
}

func createService(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string, selector map[string]string) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{
			{Name: "http", Port: 5000, TargetPort: intstr.FromInt32(5000)},
		}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
}

func helloVersionOf(body string) string {
	_, rest, ok := strings.Cut(body, "Hello version: ")
	if !ok {
		return "?"
	}
	v, _, _ := strings.Cut(rest, ",")
	return v
}

func tail(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
