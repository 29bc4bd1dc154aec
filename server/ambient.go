// What status and check read of ambient clusters: the east-west Gateway
// API Gateway, and which services are global.

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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
	gvr, _, err := kc.Resource(ctx, gatewayAPIGVK)
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

// ServiceScope is one application service of an ambient cluster.
type ServiceScope struct {
	// Global: the service carries istio.io/global=true.
	Global bool `json:"global"`
	// Endpoints counts its ready endpoints in the cluster (EndpointSlices).
	Endpoints int `json:"endpoints"`
}

// readServices maps the application services of an ambient cluster
// (namespace/name) to their scope and ready endpoints. System namespaces
// and the API server's own Service are no application's.
func readServices(ctx context.Context, kc *kube.Cluster, system []string) (map[string]ServiceScope, error) {
	list, err := kc.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list services: %w", kc.Name, err)
	}
	sliceList, err := kc.Kube.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list endpointslices: %w", kc.Name, err)
	}
	ready := map[string]int{}
	for _, es := range sliceList.Items {
		svc := es.Labels[discoveryv1.LabelServiceName]
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				ready[es.Namespace+"/"+svc]++
			}
		}
	}
	out := map[string]ServiceScope{}
	for _, s := range list.Items {
		if strings.HasPrefix(s.Namespace, "kube-") || slices.Contains(system, s.Namespace) || s.Namespace == "default" && s.Name == "kubernetes" {
			continue
		}
		key := s.Namespace + "/" + s.Name
		out[key] = ServiceScope{Global: s.Labels[deploy.GlobalServiceLabel] == "true", Endpoints: ready[key]}
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
		for svc, sc := range c.Services {
			in[svc] = append(in[svc], c.Name)
			if !sc.Global {
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

// readAmbientz reads which clusters each service's workloads are in, as
// istiod sends them to ztunnel: /debug/ambientz lists the workloads (as
// the workload API's protobuf JSON: clusterId, and services keyed by
// namespace/hostname).
func readAmbientz(ctx context.Context, kc *kube.Cluster, p *corev1.Pod, v *IstiodView) error {
	body, err := kc.Kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(monitoringPort(p)), "/debug/ambientz", nil).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%s: pod %s/%s: /debug/ambientz: %w", kc.Name, p.Namespace, p.Name, err)
	}
	clusters, err := serviceClusters(body)
	if err != nil {
		return fmt.Errorf("%s: pod %s/%s: /debug/ambientz: %w", kc.Name, p.Namespace, p.Name, err)
	}
	v.ServiceClusters = clusters
	return nil
}

// serviceClusters maps namespace/name of each service in an ambientz
// answer to the sorted clusters of its workloads.
func serviceClusters(body []byte) (map[string][]string, error) {
	var z struct {
		Workloads []struct {
			ClusterID string                     `json:"clusterId"`
			Services  map[string]json.RawMessage `json:"services"`
		} `json:"workloads"`
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(body, &z); err != nil {
		return nil, err
	}
	sets := map[string]map[string]bool{}
	for _, w := range z.Workloads {
		for key := range w.Services {
			// namespace/hostname, the hostname name.namespace.svc.<domain>.
			ns, host, ok := strings.Cut(key, "/")
			if !ok {
				continue
			}
			name, _, _ := strings.Cut(host, ".")
			svc := ns + "/" + name
			if sets[svc] == nil {
				sets[svc] = map[string]bool{}
			}
			sets[svc][w.ClusterID] = true
		}
	}
	out := make(map[string][]string, len(sets))
	for svc, cs := range sets {
		out[svc] = slices.Sorted(maps.Keys(cs))
	}
	return out, nil
}

// globalEndpointsCheck: each ambient istiod's workload view has, for every
// service that is global wherever it exists, workloads from every cluster
// where it has ready endpoints; a cluster missing there is one whose
// endpoints ztunnel is never sent. Nil when the cluster has no ambient
// istiod view or no such service.
func globalEndpointsCheck(c ClusterStatus, st *Status) *Check {
	if c.Services == nil || len(c.Istiods) == 0 {
		return nil
	}
	want := map[string][]string{}
	local := map[string]bool{}
	for _, o := range st.Clusters {
		for svc, sc := range o.Services {
			if !sc.Global {
				local[svc] = true
			}
			if sc.Endpoints > 0 {
				want[svc] = append(want[svc], o.Name)
			}
		}
	}
	ck := &Check{Name: "istiod has every cluster's endpoints of global services", Cluster: c.Name}
	var problems []string
	checked := 0
	for _, svc := range slices.Sorted(maps.Keys(want)) {
		if local[svc] || len(want[svc]) < 2 {
			continue // the global services check names it; or nothing to share
		}
		checked++
		for _, v := range c.Istiods {
			if v.Error != "" {
				continue // istiodCheck reports it
			}
			var missing []string
			for _, cl := range want[svc] {
				if !slices.Contains(v.ServiceClusters[svc], cl) {
					missing = append(missing, cl)
				}
			}
			if len(missing) > 0 {
				problems = append(problems, fmt.Sprintf("istiod %s/%s has no workload of %s from %s", v.Namespace, v.Pod, svc, strings.Join(missing, ", ")))
			}
		}
	}
	if checked == 0 {
		return nil
	}
	if len(problems) > 0 {
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod reads the other clusters through its remote secrets (see the remote secrets checks) and shares only istio.io/global services; check the service's pods are Ready there"
		return ck
	}
	ck.OK = true
	ck.Message = fmt.Sprintf("%d global service(s) with endpoints from every cluster", checked)
	return ck
}
