// What status and check read of ambient clusters: the east-west Gateway
// API Gateway, and which services are global.

package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
)

// AmbientGatewayStatus is an ambient cluster's east-west Gateway as found.
type AmbientGatewayStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Found     bool   `json:"found"`
	Class     string `json:"class,omitempty"`
	// NetworkLabel is its topology.istio.io/network label: istiod takes a
	// remote cluster's istio-east-west Gateway for a network's gateway only
	// with it.
	NetworkLabel string `json:"networkLabel,omitempty"`
	Error        string `json:"error,omitempty"`
}

var gatewayAPIGVK = schema.GroupVersionKind{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "Gateway"}

func readAmbientGateway(ctx context.Context, kc *kube.Cluster, g *gateways.Gateway) *AmbientGatewayStatus {
	out := &AmbientGatewayStatus{Namespace: g.Namespace, Name: g.Name}
	gvr, _, err := kc.Resource(gatewayAPIGVK)
	if err != nil {
		out.Error = fmt.Sprintf("%s: Gateway API: %v", kc.Name, err)
		return out
	}
	u, err := kc.Dynamic.Resource(gvr).Namespace(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
	switch {
	case isNotFound(err):
		return out
	case err != nil:
		out.Error = fmt.Sprintf("%s: read Gateway %s/%s: %v", kc.Name, g.Namespace, g.Name, err)
		return out
	}
	out.Found = true
	out.NetworkLabel = u.GetLabels()[gateways.NetworkLabel]
	out.Class, _, _ = unstructured.NestedString(u.Object, "spec", "gatewayClassName")
	return out
}

// readServices maps the application services of an ambient cluster
// (namespace/name) to whether they carry istio.io/global=true. System
// namespaces and the API server's own Service are no application's.
func readServices(ctx context.Context, kc *kube.Cluster, system []string) (map[string]bool, error) {
	list, err := kc.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list services: %w", kc.Name, err)
	}
	out := map[string]bool{}
	for _, s := range list.Items {
		if strings.HasPrefix(s.Namespace, "kube-") || slices.Contains(system, s.Namespace) || s.Namespace == "default" && s.Name == "kubernetes" {
			continue
		}
		out[s.Namespace+"/"+s.Name] = s.Labels[deploy.GlobalServiceLabel] == "true"
	}
	return out, nil
}

// systemNamespaces are the mesh's own namespaces in a cluster: no
// application service lives there.
func (p *plan) systemNamespaces(cp gateways.ClusterPlan) []string {
	out := []string{cp.Namespace, p.Layout.Namespaces.External, deploy.DefaultCNINamespace, deploy.DefaultZTunnelNamespace}
	if p.Deploy.CNINamespace != "" {
		out = append(out, p.Deploy.CNINamespace)
	}
	if p.Deploy.ZTunnelNamespace != "" {
		out = append(out, p.Deploy.ZTunnelNamespace)
	}
	return out
}

// ambientGatewayCheck: an ambient cluster's east-west Gateway exists, is of
// class istio-east-west and carries its network's label. Nil for a cluster
// without one.
func ambientGatewayCheck(c ClusterStatus) *Check {
	g := c.AmbientGateway
	if g == nil {
		return nil
	}
	ck := &Check{Name: "ambient gateway on its network", Cluster: c.Name}
	ref := g.Namespace + "/" + g.Name
	switch {
	case g.Error != "":
		ck.Message = g.Error
		ck.Hint = "install the Gateway API CRDs (sigs.k8s.io/gateway-api config/crd/standard), then run flotilla apply"
	case !g.Found:
		ck.Message = "no Gateway " + ref
		ck.Hint = "run flotilla apply"
	case g.Class != gateways.EastWestClassName:
		ck.Message = fmt.Sprintf("Gateway %s has gatewayClassName %q, want %s", ref, g.Class, gateways.EastWestClassName)
		ck.Hint = "run flotilla apply"
	case g.NetworkLabel != c.Network:
		ck.Message = fmt.Sprintf("Gateway %s has %s=%q, want %q: the other clusters' istiods take it for network %s's gateway only with that label", ref, gateways.NetworkLabel, g.NetworkLabel, c.Network, c.Network)
		ck.Hint = fmt.Sprintf("run flotilla apply (or kubectl label gateway -n %s %s %s=%s --overwrite)", g.Namespace, g.Name, gateways.NetworkLabel, c.Network)
	default:
		ck.OK = true
		ck.Message = fmt.Sprintf("Gateway %s, network %s", ref, c.Network)
	}
	return ck
}

// globalServicesCheck: in an ambient mesh a service is local to its
// cluster unless it carries istio.io/global=true (the ambient profile's
// serviceScopeConfigs), so a service that exists in several clusters but
// is not global everywhere answers only locally where it is not. flotilla
// does not label application services: it says which. Nil for a mesh
// with fewer than two ambient clusters read.
func globalServicesCheck(st *Status) *Check {
	in := map[string][]string{}
	local := map[string][]string{}
	readers := 0
	for _, c := range st.Clusters {
		if c.Services == nil {
			continue
		}
		readers++
		for svc, global := range c.Services {
			in[svc] = append(in[svc], c.Name)
			if !global {
				local[svc] = append(local[svc], c.Name)
			}
		}
	}
	if readers < 2 {
		return nil
	}
	ck := &Check{Name: "services in several clusters are global"}
	var problems, hints []string
	shared := 0
	for _, svc := range slices.Sorted(maps.Keys(in)) {
		if len(in[svc]) < 2 {
			continue
		}
		shared++
		if len(local[svc]) == 0 {
			continue
		}
		sort.Strings(in[svc])
		sort.Strings(local[svc])
		problems = append(problems, fmt.Sprintf("service %s is in %s but not %s=true in %s", svc, strings.Join(in[svc], ", "), deploy.GlobalServiceLabel, strings.Join(local[svc], ", ")))
		ns, name, _ := strings.Cut(svc, "/")
		hints = append(hints, fmt.Sprintf("kubectl label service -n %s %s %s=true in %s", ns, name, deploy.GlobalServiceLabel, strings.Join(local[svc], ", ")))
	}
	if len(problems) > 0 {
		ck.Message = strings.Join(problems, "; ") + ": ambient keeps a service without it local to each cluster"
		ck.Hint = "if it should answer across clusters: " + strings.Join(hints, "; ")
		return ck
	}
	ck.OK = true
	ck.Message = fmt.Sprintf("%d shared service(s), all global", shared)
	return ck
}
