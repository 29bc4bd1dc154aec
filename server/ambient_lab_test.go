package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
)

// ambientLabMesh is an ambient multi-primary mesh on two networks in a
// control-plane namespace of its own.
func ambientLabMesh(t *testing.T, l *lab.Lab, ns string) *spec.Mesh {
	t.Helper()
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: ambient}
spec:
  topology: multi-primary
  dataplaneMode: ambient
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

func checkNamed(checks []Check, name, cluster string) (Check, bool) {
	for _, c := range checks {
		if c.Name == name && c.Cluster == cluster {
			return c, true
		}
	}
	return Check{}, false
}

// TestAmbientApplyLab applies an ambient two-cluster multi-network spec
// through the hub to real API servers with the Sail, Istio and Gateway API
// CRDs and reads back every object; a second apply writes nothing. check
// passes the ambient gateways and finds the negative controls: a Gateway
// without its network label, and a service in both clusters that is not
// global in one. verify's sample is ambient and global.
func TestAmbientApplyLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := fmt.Sprintf("istio-amb-%x", rand.Uint32())
	// The Sail resources are cluster-scoped with an immutable namespace:
	// none from other tests before, none left after.
	reset := func(ctx context.Context) {
		resetSail(ctx, t, l)
		for _, name := range []string{"east", "west"} {
			kc := connectLab(t, l, name)
			gvr, _, err := kc.Resource(ctx, schema.GroupVersionKind{Group: "sailoperator.io", Version: "v1", Kind: "ZTunnel"})
			if err != nil {
				t.Fatal(err)
			}
			if err := kc.Dynamic.Resource(gvr).Delete(ctx, deploy.ZTunnelName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("%s: delete ZTunnel: %v", name, err)
			}
		}
	}
	reset(ctx)
	t.Cleanup(func() { reset(context.Background()) })
	east, west := connectLab(t, l, "east"), connectLab(t, l, "west")
	for _, kc := range []*kube.Cluster{east, west} {
		t.Cleanup(func() {
			for _, n := range []string{ns, "amb-app"} {
				if err := kc.Kube.CoreV1().Namespaces().Delete(context.Background(), n, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("%s: delete namespace %s: %v", kc.Name, n, err)
				}
			}
		})
	}
	h := newHub(t)
	m := ambientLabMesh(t, l, ns)
	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}

	t.Run("every object reads back", func(t *testing.T) {
		p, err := compile(m)
		if err != nil {
			t.Fatal(err)
		}
		opts := p.Deploy
		opts.AllowPendingAddress = true
		plans, err := gateways.Plan(p.Layout, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		conns := map[string]*kube.Cluster{"east": east, "west": west}
		for _, cp := range plans {
			kc := conns[cp.Cluster]
			var kinds []string
			for _, o := range cp.Objects() {
				sent := o.Unstructured()
				kinds = append(kinds, sent.GetKind())
				live, err := o.Get(ctx, kc)
				if err != nil {
					t.Fatalf("%s: read %s: %v", cp.Cluster, o.Ref(), err)
				}
				owner := kube.ManagerControlPlane
				if sent.GetKind() == "Gateway" {
					owner = kube.ManagerGateways
				}
				if !o.UpToDate(live, owner) {
					t.Errorf("%s: %s is not as applied by %s", cp.Cluster, o.Ref(), owner)
				}
			}
			if want := "Namespace Namespace Namespace Gateway IstioCNI ZTunnel Istio"; strings.Join(kinds, " ") != want {
				t.Errorf("%s: objects %v, want %s", cp.Cluster, kinds, want)
			}
			cc, err := pki.ReadCACerts(ctx, kc, ns)
			if err != nil || cc == nil {
				t.Errorf("%s: cacerts in %s: %v", cp.Cluster, ns, err)
			}
			other := map[string]string{"east": "west", "west": "east"}[cp.Cluster]
			if _, err := kc.Kube.CoreV1().Secrets(ns).Get(ctx, "istio-remote-secret-"+other, metav1.GetOptions{}); err != nil {
				t.Errorf("%s: remote secret for %s: %v", cp.Cluster, other, err)
			}
		}
	})

	t.Run("a second apply writes nothing", func(t *testing.T) {
		counter := &requestCounter{n: map[string]int{}}
		h.Connect = counter.connect
		defer func() { h.Connect = nil }()
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
			if s.Step == "control plane" && s.Action != "unchanged" {
				t.Errorf("second apply: %s %s: %s, want unchanged", s.Cluster, s.Step, s.Action)
			}
		}
	})

	t.Run("check: ambient gateways on their networks", func(t *testing.T) {
		checks, err := h.Check(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{"east", "west"} {
			ck, ok := checkNamed(checks, "ambient gateway on its network", c)
			if !ok || !ck.OK {
				t.Errorf("%s: ambient gateway check %+v (found %v), want ok", c, ck, ok)
			}
		}
	})

	t.Run("check: an ambient gateway without the network label is found", func(t *testing.T) {
		gvr, _, err := west.Resource(ctx, gatewayAPIGVK)
		if err != nil {
			t.Fatal(err)
		}
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:null}}}`, gateways.NetworkLabel)
		if _, err := west.Dynamic.Resource(gvr).Namespace(ns).Patch(ctx, gateways.EastWestName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		checks, err := h.Check(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		ck, ok := checkNamed(checks, "ambient gateway on its network", "west")
		if !ok || ck.OK || !strings.Contains(ck.Message, `topology.istio.io/network="", want "network2"`) || ck.Hint == "" {
			t.Errorf("west: ambient gateway check %+v (found %v), want a failure naming the missing label", ck, ok)
		}
		if ck, _ := checkNamed(checks, "ambient gateway on its network", "east"); !ck.OK {
			t.Errorf("east: ambient gateway check %+v, want ok", ck)
		}
		// apply puts it back.
		if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
			t.Fatalf("apply: %v %v", err, rep.Err())
		}
		u, err := west.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, gateways.EastWestName, metav1.GetOptions{})
		if err != nil || u.GetLabels()[gateways.NetworkLabel] != "network2" {
			t.Errorf("west: Gateway after apply: labels %v, %v", labelsOf(u), err)
		}
	})

	t.Run("check: a service in both clusters without istio.io/global is found", func(t *testing.T) {
		write := func(kc *kube.Cluster, global bool) {
			t.Helper()
			labels := map[string]string{"app": "shared"}
			if global {
				labels[deploy.GlobalServiceLabel] = "true"
			}
			if _, err := kc.Kube.CoreV1().Namespaces().Apply(ctx, corev1ac.Namespace("amb-app"), kc.As("flotilla-test").ApplyOptions()); err != nil {
				t.Fatal(err)
			}
			svc := corev1ac.Service("shared", "amb-app").WithLabels(labels).
				WithSpec(corev1ac.ServiceSpec().WithSelector(map[string]string{"app": "shared"}).WithPorts(corev1ac.ServicePort().WithName("http").WithPort(8080)))
			opts := kc.As("flotilla-test").ApplyOptions()
			opts.Force = true
			if _, err := kc.Kube.CoreV1().Services("amb-app").Apply(ctx, svc, opts); err != nil {
				t.Fatal(err)
			}
		}
		write(east, true)
		write(west, false)
		checks, err := h.Check(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		ck, ok := checkNamed(checks, "services in several clusters are global", "")
		if !ok || ck.OK || !strings.Contains(ck.Message, "service amb-app/shared is in east, west but not istio.io/global=true in west") {
			t.Errorf("global services check %+v (found %v), want a failure naming amb-app/shared in west", ck, ok)
		}
		write(west, true)
		checks, err = h.Check(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if ck, _ := checkNamed(checks, "services in several clusters are global", ""); !ck.OK {
			t.Errorf("global services check %+v once labelled in both, want ok", ck)
		}
	})

	t.Run("verify's sample is ambient and global", func(t *testing.T) {
		vc := []*verifyCluster{{name: "east", kc: east, version: "v1", ambient: true}}
		if err := h.deploySample(ctx, vc); err != nil {
			t.Fatal(err)
		}
		defer h.removeSample(context.Background(), vc)
		nsObj, err := east.Kube.CoreV1().Namespaces().Get(ctx, sampleNamespace, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := nsObj.Labels[deploy.DataplaneModeLabel]; got != "ambient" {
			t.Errorf("namespace %s: %s=%q, want ambient", sampleNamespace, deploy.DataplaneModeLabel, got)
		}
		if _, ok := nsObj.Labels["istio-injection"]; ok {
			t.Errorf("namespace %s labelled for sidecar injection in an ambient cluster: %v", sampleNamespace, nsObj.Labels)
		}
		svc, err := east.Kube.CoreV1().Services(sampleNamespace).Get(ctx, helloService, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := svc.Labels[deploy.GlobalServiceLabel]; got != "true" {
			t.Errorf("service %s/%s: %s=%q, want true", sampleNamespace, helloService, deploy.GlobalServiceLabel, got)
		}
		// --local-service: the same sample, its Service left local.
		vc[0].local = true
		if err := h.deploySample(ctx, vc); err != nil {
			t.Fatal(err)
		}
		svc, err = east.Kube.CoreV1().Services(sampleNamespace).Get(ctx, helloService, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := svc.Labels[deploy.GlobalServiceLabel]; ok {
			t.Errorf("local-service: service %s/%s: %s=%q, want no label", sampleNamespace, helloService, deploy.GlobalServiceLabel, got)
		}
	})
}

func labelsOf(u *unstructured.Unstructured) map[string]string {
	if u == nil {
		return nil
	}
	return u.GetLabels()
}
