package emulator

import (
	"context"
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Istio's own names, as Istio reads them (the emulator stands in for
// Envoy, so it spells them itself rather than taking flotilla's constants).
const (
	networkLabel       = "topology.istio.io/network"
	sidecarStatus      = "sidecar.istio.io/status"
	defaultTrustDomain = "cluster.local"
	crossNetworkPort   = 15443
)

var gatewayGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}

// gatewayInfo is a gateway Service (label istio=...) with an address.
type gatewayInfo struct {
	selector string // the istio label: eastwestgateway, ingressgateway
	address  string // first load-balancer ingress IP
	network  string
	// crossNetwork: a Gateway resource selecting it serves 15443 AUTO_PASSTHROUGH.
	crossNetwork bool
	// ports are the Service's ports with a numeric target port.
	ports []servicePort
}

type servicePort struct{ port, target int32 }

// clusterView is one lab cluster as its own components (kubelet,
// kube-proxy, the gateways' and sidecars' Envoys) see it, read with the
// emulator's admin connection.
type clusterView struct {
	name       string
	nodeIP     net.IP
	namespaces map[string]map[string]string
	pods       []corev1.Pod
	gateways   []gatewayInfo
	// eastWest are the Gateway API Gateways of class istio-east-west
	// (ambient multi-network) with a status address.
	eastWest []eastWestGateway
}

func readCluster(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface) (*clusterView, error) {
	v := &clusterView{name: name, namespaces: map[string]map[string]string{}}
	nodes, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list nodes: %w", name, err)
	}
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && v.nodeIP == nil {
				v.nodeIP = net.ParseIP(a.Address)
			}
		}
	}
	nss, err := kc.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list namespaces: %w", name, err)
	}
	for _, ns := range nss.Items {
		v.namespaces[ns.Name] = ns.Labels
	}
	pods, err := kc.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list pods: %w", name, err)
	}
	v.pods = pods.Items
	v.gateways, err = readGateways(ctx, name, kc, dyn)
	if err != nil {
		return v, err
	}
	v.eastWest, err = readEastWestGateways(ctx, name, dyn)
	return v, err
}

// readGateways finds gateway Services (label istio) with a load balancer
// address and the Gateway resources that select them.
func readGateways(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface) ([]gatewayInfo, error) {
	svcs, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: "istio"})
	if err != nil {
		return nil, fmt.Errorf("%s: list gateway services: %w", name, err)
	}
	gws, err := dyn.Resource(gatewayGVR).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list Istio Gateways: %w", name, err)
	}
	var out []gatewayInfo
	for _, s := range svcs.Items {
		g := gatewayInfo{selector: s.Labels["istio"], network: s.Labels[networkLabel], address: lbAddress(&s)}
		if g.address == "" {
			continue
		}
		for _, p := range s.Spec.Ports {
			switch {
			case p.TargetPort.IntValue() != 0:
				g.ports = append(g.ports, servicePort{port: p.Port, target: int32(p.TargetPort.IntValue())})
			case p.TargetPort.StrVal == "":
				g.ports = append(g.ports, servicePort{port: p.Port, target: p.Port})
			}
		}
		for _, gw := range gws.Items {
			sel, _, _ := unstructured.NestedStringMap(gw.Object, "spec", "selector")
			if sel["istio"] != g.selector {
				continue
			}
			servers, _, _ := unstructured.NestedSlice(gw.Object, "spec", "servers")
			for _, raw := range servers {
				srv, _ := raw.(map[string]any)
				port, _, _ := unstructured.NestedInt64(srv, "port", "number")
				mode, _, _ := unstructured.NestedString(srv, "tls", "mode")
				if port == crossNetworkPort && mode == "AUTO_PASSTHROUGH" {
					g.crossNetwork = true
				}
			}
		}
		out = append(out, g)
	}
	return out, nil
}

func lbAddress(s *corev1.Service) string {
	if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return ""
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			return in.IP
		}
	}
	return ""
}

// helloVersion is what the helloworld app answers with: $SERVICE_VERSION,
// else the version its image was built for.
func helloVersion(p *corev1.Pod) (version string, port int32, ok bool) {
	for _, c := range p.Spec.Containers {
		i := strings.Index(c.Image, "examples-helloworld-")
		if i < 0 {
			continue
		}
		version = strings.SplitN(c.Image[i+len("examples-helloworld-"):], ":", 2)[0]
		for _, e := range c.Env {
			if e.Name == "SERVICE_VERSION" {
				version = e.Value
			}
		}
		port = 5000
		if len(c.Ports) > 0 {
			port = c.Ports[0].ContainerPort
		}
		return version, port, true
	}
	return "", 0, false
}

func isCurl(p *corev1.Pod) bool {
	for _, c := range p.Spec.Containers {
		if strings.Contains(c.Image, "curl") {
			return true
		}
	}
	return false
}

func running(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
}

// endpoint is one ready address of a service.
type endpoint struct {
	ip   string
	port int32
}

// listEndpoints reads a service's ready endpoints in one cluster, as
// kube-proxy routes to them.
func listEndpoints(ctx context.Context, cluster string, kc kubernetes.Interface, ns, svc, portName string) ([]endpoint, error) {
	slices, err := kc.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, fmt.Errorf("%s: list endpointslices %s/%s: %w", cluster, ns, svc, err)
	}
	var out []endpoint
	for _, sl := range slices.Items {
		var port int32
		for _, p := range sl.Ports {
			if p.Port != nil && (p.Name != nil && *p.Name == portName || portName == "") {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range sl.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready || len(e.Addresses) == 0 {
				continue
			}
			out = append(out, endpoint{ip: e.Addresses[0], port: port})
		}
	}
	return out, nil
}
