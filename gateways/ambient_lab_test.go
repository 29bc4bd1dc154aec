package gateways

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

var ztunnelGVK = schema.GroupVersionKind{Group: "sailoperator.io", Version: "v1", Kind: "ZTunnel"}

// TestLabAmbient applies an ambient multi-primary mesh on two networks to
// real API servers carrying the Sail, Istio and Gateway API CRDs: every
// object is stored as sent (the real schemas accept the ZTunnel, the
// ambient profiles and the istio-east-west Gateway), the Gateway is the
// gateways subsystem's, no classic gateway workload is written, and a
// second apply writes nothing.
func TestLabAmbient(t *testing.T) {
	ctx := context.Background()
	_, all := labClusters(t, false)
	clusters := map[string]*kube.Cluster{"east": all["east"], "west": all["west"]}
	reset := func() {
		resetSail(t, clusters)
		for _, c := range clusters {
			gvr, _, err := c.Resource(ctx, ztunnelGVK)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Dynamic.Resource(gvr).Delete(ctx, deploy.ZTunnelName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatalf("%s: delete ZTunnel: %v", c.Name, err)
			}
		}
	}
	reset()
	t.Cleanup(reset)
	members := ambientMembers()
	opts := prefixed("amb", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
	opts.ZTunnelNamespace = "amb-ztunnel"
	var lines []string
	res, err := applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatalf("ApplyMesh: %v\n%s", err, strings.Join(lines, "\n"))
	}

	t.Run("every object is stored as sent", func(t *testing.T) {
		for _, p := range res.Plans {
			var kinds []string
			for _, o := range p.Objects() {
				sent := o.Unstructured()
				kinds = append(kinds, sent.GetKind())
				got := get(ctx, t, clusters[p.Cluster], sent)
				delete(sent.Object, "metadata")
				if path := subset("", sent.Object, got.Object); path != "" {
					t.Errorf("%s: %s: field %s was pruned or changed by the API server", p.Cluster, o.Ref(), path)
				}
			}
			if want := []string{"Namespace", "Namespace", "Namespace", "Gateway", "IstioCNI", "ZTunnel", "Istio"}; !slices.Equal(kinds, want) {
				t.Errorf("%s: objects %v, want %v", p.Cluster, kinds, want)
			}
		}
	})

	t.Run("the ambient values read back from the cluster", func(t *testing.T) {
		for _, p := range res.Plans {
			c := clusters[p.Cluster]
			for _, x := range []struct {
				gvk   schema.GroupVersionKind
				name  string
				path  string
				value string
			}{
				{istioGVK, deploy.IstioName, "spec.profile", "ambient"},
				{istioGVK, deploy.IstioName, "spec.values.global.network", p.Network},
				{istioGVK, deploy.IstioName, "spec.values.global.multiCluster.clusterName", p.Cluster},
				{istioGVK, deploy.IstioName, "spec.values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK", "true"},
				{istioGVK, deploy.IstioName, "spec.values.pilot.trustedZtunnelNamespace", "amb-ztunnel"},
				{istioCNIGVK, deploy.IstioCNIName, "spec.profile", "ambient"},
				{ztunnelGVK, deploy.ZTunnelName, "spec.namespace", "amb-ztunnel"},
				{ztunnelGVK, deploy.ZTunnelName, "spec.values.ztunnel.multiCluster.clusterName", p.Cluster},
				{ztunnelGVK, deploy.ZTunnelName, "spec.values.ztunnel.network", p.Network},
			} {
				u := &unstructured.Unstructured{}
				u.SetGroupVersionKind(x.gvk)
				u.SetName(x.name)
				got, _, _ := unstructured.NestedString(get(ctx, t, c, u).Object, strings.Split(x.path, ".")...)
				if got != x.value {
					t.Errorf("%s: %s %s %s = %q, want %q", p.Cluster, x.gvk.Kind, x.name, x.path, got, x.value)
				}
			}
		}
	})

	t.Run("the east-west Gateway is the gateways subsystem's, with the network label and the HBONE listener", func(t *testing.T) {
		for _, p := range res.Plans {
			c := clusters[p.Cluster]
			u := &unstructured.Unstructured{}
			u.SetAPIVersion(GatewayAPIVersion)
			u.SetKind("Gateway")
			u.SetNamespace(opts.ControlPlaneNamespace())
			u.SetName(EastWestName)
			got := get(ctx, t, c, u)
			if l := got.GetLabels()[NetworkLabel]; l != p.Network {
				t.Errorf("%s: Gateway label %s=%q, want %q", p.Cluster, NetworkLabel, l, p.Network)
			}
			if m := managers(got); !slices.Equal(m, []string{kube.ManagerGateways}) {
				t.Errorf("%s: Gateway applied by %v, want only %s", p.Cluster, m, kube.ManagerGateways)
			}
			ls, _, _ := unstructured.NestedSlice(got.Object, "spec", "listeners")
			if len(ls) != 1 {
				t.Fatalf("%s: listeners %v", p.Cluster, ls)
			}
			l := ls[0].(map[string]any)
			tls, _ := l["tls"].(map[string]any)
			opt, _ := tls["options"].(map[string]any)
			if s := fmt.Sprint(l["name"], "/", l["port"], "/", l["protocol"], "/", tls["mode"], "/", opt[TLSTerminateModeOption]); s != "mesh/15008/HBONE/Terminate/ISTIO_MUTUAL" {
				t.Errorf("%s: listener %s", p.Cluster, s)
			}
			// No classic gateway: istiod deploys the ambient one.
			if _, err := c.Kube.AppsV1().Deployments(opts.ControlPlaneNamespace()).Get(ctx, EastWestName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s: Deployment %s: %v, want none written by flotilla", p.Cluster, EastWestName, err)
			}
		}
	})

	t.Run("a second apply changes nothing", func(t *testing.T) {
		assertNoChange(ctx, t, clusters, res.Plans, func() (*Result, error) {
			return applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, nil)
		})
	})
}

// TestLabDataplaneModeSwitch: a cluster that moves from sidecar to ambient
// loses flotilla's classic east-west gateway (whose name istiod's ambient
// deployment takes) and gains the Gateway API Gateway; moving back
// removes that Gateway and brings the classic one back. Objects of the
// same names that are not flotilla's are left alone.
func TestLabDataplaneModeSwitch(t *testing.T) {
	ctx := context.Background()
	_, all := labClusters(t, false)
	clusters := map[string]*kube.Cluster{"east": all["east"], "west": all["west"]}
	reset := func() {
		resetSail(t, clusters)
		for _, c := range clusters {
			gvr, _, err := c.Resource(ctx, ztunnelGVK)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Dynamic.Resource(gvr).Delete(ctx, deploy.ZTunnelName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatalf("%s: delete ZTunnel: %v", c.Name, err)
			}
		}
	}
	reset()
	t.Cleanup(reset)
	opts := prefixed("switch", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
	opts.ZTunnelNamespace = "switch-ztunnel"
	ns := opts.ControlPlaneNamespace()
	sidecar := []deploy.Member{member("east", "primary", "network1"), member("west", "primary", "network2")}
	exists := func(c *kube.Cluster, gvk schema.GroupVersionKind, name string) bool {
		t.Helper()
		gvr, _, err := c.Resource(ctx, gvk)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	deployment := schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	service := schema.GroupVersionKind{Version: "v1", Kind: "Service"}
	gatewayAPI := schema.GroupVersionKind{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "Gateway"}
	type want struct{ classic, ambient bool }
	look := func(step string, w want) {
		t.Helper()
		for name, c := range clusters {
			got := want{
				classic: exists(c, deployment, EastWestName) && exists(c, service, EastWestName) && exists(c, gatewayGVK, CrossNetworkGatewayName),
				ambient: exists(c, gatewayAPI, EastWestName),
			}
			if got != w {
				t.Errorf("%s: %s: classic gateway %v, ambient Gateway %v; want %v, %v", step, name, got.classic, got.ambient, w.classic, w.ambient)
			}
			if !got.classic && (exists(c, deployment, EastWestName) || exists(c, service, EastWestName) || exists(c, gatewayGVK, CrossNetworkGatewayName)) {
				t.Errorf("%s: %s: part of the classic gateway is left", step, name)
			}
		}
	}
	apply := func(step string, members []deploy.Member) {
		t.Helper()
		var lines []string
		if _, err := applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, func(s string) { lines = append(lines, s) }); err != nil {
			t.Fatalf("%s: ApplyMesh: %v\n%s", step, err, strings.Join(lines, "\n"))
		}
	}
	apply("sidecar", sidecar)
	look("sidecar", want{classic: true})
	apply("to ambient", ambientMembers())
	look("to ambient", want{ambient: true})

	// A Deployment of the classic name that is not flotilla's stays.
	foreign := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": EastWestName, "namespace": ns},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "other"}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"app": "other"}},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "c", "image": "example.com/other"}}},
			},
		},
	}}
	east := clusters["east"]
	gvr, _, err := east.Resource(ctx, deployment)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := east.Dynamic.Resource(gvr).Namespace(ns).Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	apply("ambient again", ambientMembers())
	if !exists(east, deployment, EastWestName) {
		t.Error("east: a Deployment flotilla did not write was deleted")
	}
	if err := east.Dynamic.Resource(gvr).Namespace(ns).Delete(ctx, EastWestName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	apply("back to sidecar", sidecar)
	look("back to sidecar", want{classic: true})
}
