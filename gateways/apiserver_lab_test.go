package gateways

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// TestLabAPIServerExposureFollowsSpec: with apiServerAccess gateway on west
// (one network), ApplyMesh gives only west an east-west gateway, whose
// Service has port tls-kube-api 6443 and whose Gateway and VirtualService
// are stored as sent; when the spec says direct again (west on a network
// of its own, so that its gateway stays), the next ApplyMesh deletes both
// and the Service's port, so nothing of the API server stays exposed.
func TestLabAPIServerExposureFollowsSpec(t *testing.T) {
	ctx := context.Background()
	_, clusters := labClusters(t, false)
	resetSail(t, clusters)
	opts := prefixed("kapi", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
	ns := opts.ControlPlaneNamespace()
	private := member("west", "primary", "n1")
	private.APIServerAccess = deploy.APIServerViaGateway
	members := []deploy.Member{member("east", "primary", "n1"), private}
	west := clusters["west"]

	var lines []string
	res, err := applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatalf("ApplyMesh: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if p := planOf(t, res, "east"); p.Gateway != nil {
		t.Errorf("east, read directly on one network, runs a gateway")
	}
	for _, o := range planOf(t, res, "west").Gateways {
		if k := o.Unstructured().GetKind(); k != "Gateway" && k != "VirtualService" {
			continue
		}
		sent := o.Unstructured()
		got := get(ctx, t, west, sent)
		delete(sent.Object, "metadata")
		if path := subset("", sent.Object, got.Object); path != "" {
			t.Errorf("west: %s: field %s was pruned or changed by the API server", o.Ref(), path)
		}
	}
	if !hasPort(t, ctx, west, ns) {
		t.Errorf("west: gateway Service has no port tls-kube-api 6443")
	}
	if a := res.Addresses["west"]; a.Host == "" || a.Ports["tls-kube-api"] != 6443 {
		t.Errorf("west: gateway address %+v, want a host and tls-kube-api 6443", a)
	}

	// Direct again, west now on a network of its own so that its gateway
	// stays (for cross-network traffic): what it exposed of the API server goes.
	lines = nil
	members[1] = member("west", "primary", "n2")
	if _, err := applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, func(s string) { lines = append(lines, s) }); err != nil {
		t.Fatalf("ApplyMesh: %v\n%s", err, strings.Join(lines, "\n"))
	}
	for _, name := range []string{APIServerGatewayName, APIServerVirtualServiceName} {
		kind := "gateways"
		if name == APIServerVirtualServiceName {
			kind = "virtualservices"
		}
		_, err := west.Dynamic.Resource(gatewayGVK.GroupVersion().WithResource(kind)).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("west: %s %s/%s after direct: err %v, want not found", kind, ns, name, err)
		}
	}
	if hasPort(t, ctx, west, ns) {
		t.Errorf("west: gateway Service still has port tls-kube-api after direct")
	}
	said := strings.Join(lines, "\n")
	for _, want := range []string{"west: Gateway " + ns + "/kube-apiserver-gateway: deleted", "west: VirtualService " + ns + "/kube-apiserver-vs: deleted"} {
		if !strings.Contains(said, want) {
			t.Errorf("progress does not say %q:\n%s", want, said)
		}
	}
}

// hasPort says whether the east-west gateway Service in ns has tls-kube-api 6443.
func hasPort(t *testing.T, ctx context.Context, c *kube.Cluster, ns string) bool {
	t.Helper()
	svc, err := c.Kube.CoreV1().Services(ns).Get(ctx, EastWestName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: gateway Service: %v", c.Name, err)
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == "tls-kube-api" && p.Port == 6443 {
			return true
		}
	}
	return false
}
