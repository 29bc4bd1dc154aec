package emulator

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/pki"
)

// Istio's own names, as Istio reads them (the emulator stands in for Istio,
// so it spells them itself rather than taking flotilla's constants).
const (
	networkLabel       = "topology.istio.io/network"
	multiClusterLabel  = "istio/multiCluster"
	clusterAnnotation  = "networking.istio.io/cluster"
	injectionLabel     = "istio-injection"
	revisionLabel      = "istio.io/rev"
	injectPodLabel     = "sidecar.istio.io/inject"
	sidecarStatus      = "sidecar.istio.io/status"
	defaultRevision    = "default"
	defaultTrustDomain = "cluster.local"
	crossNetworkPort   = 15443
	istiodPort         = 15012
)

var (
	sailIstioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
	gatewayGVR   = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}
)

// controlPlane is one cluster's Sail Istio resource and what istiod would
// load with it.
type controlPlane struct {
	revision    string
	namespace   string
	profile     string
	meshID      string
	network     string
	clusterName string
	trustDomain string
	// remotePilotAddress: a remote's proxies get config from the istiod behind it.
	remotePilotAddress string

	issuer    *pki.Issuer // nil: no usable cacerts (cacertsErr says why)
	roots     *x509.CertPool
	rootsPEM  string
	cacertsOK error
	// nsNetwork is the control-plane namespace's network label.
	nsNetwork string
	// secrets are the remote secrets in the control-plane namespace.
	secrets []remoteSecret
}

func (cp *controlPlane) remote() bool { return cp.profile == "remote" || cp.remotePilotAddress != "" }

// proxyNetwork is the network of the proxies this control plane injects.
func (cp *controlPlane) proxyNetwork() string {
	if cp.nsNetwork != "" {
		return cp.nsNetwork
	}
	return cp.network
}

type remoteSecret struct {
	name   string
	target string // networking.istio.io/cluster
	data   []byte // the kubeconfig
}

// gatewayInfo is a gateway Service (label istio=...) with an address.
type gatewayInfo struct {
	selector string // the istio label: eastwestgateway, ingressgateway
	address  string // first load-balancer ingress IP
	network  string
	// crossNetwork: a Gateway resource selecting it serves 15443 AUTO_PASSTHROUGH.
	crossNetwork bool
	// istiod: a Gateway resource selecting it exposes 15012.
	istiod bool
}

// clusterView is one lab cluster as its own components (kubelet, kube-proxy,
// an in-cluster istiod) see it, read with the emulator's admin connection.
type clusterView struct {
	name       string
	cp         *controlPlane
	nodeIP     net.IP
	namespaces map[string]map[string]string
	pods       []corev1.Pod
	gateways   []gatewayInfo
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
	v.cp, err = readControlPlane(ctx, name, kc, dyn)
	if err != nil {
		return nil, err
	}
	if v.cp == nil {
		return v, nil
	}
	v.cp.nsNetwork = v.namespaces[v.cp.namespace][networkLabel]
	v.gateways, err = readGateways(ctx, name, kc, dyn, v.cp.namespace)
	return v, err
}

// readControlPlane reads the Sail Istio resource: "default" when there is
// one, else the first (a data-plane cluster's external-istiod).
func readControlPlane(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface) (*controlPlane, error) {
	list, err := dyn.Resource(sailIstioGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list Istio resources: %w", name, err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	u := list.Items[0]
	for _, it := range list.Items {
		if it.GetName() == defaultRevision {
			u = it
		}
	}
	str := func(path ...string) string {
		s, _, _ := unstructured.NestedString(u.Object, path...)
		return s
	}
	cp := &controlPlane{
		revision:           u.GetName(),
		namespace:          str("spec", "namespace"),
		profile:            str("spec", "profile"),
		meshID:             str("spec", "values", "global", "meshID"),
		network:            str("spec", "values", "global", "network"),
		clusterName:        str("spec", "values", "global", "multiCluster", "clusterName"),
		trustDomain:        str("spec", "values", "meshConfig", "trustDomain"),
		remotePilotAddress: str("spec", "values", "global", "remotePilotAddress"),
	}
	if cp.namespace == "" {
		cp.namespace = "istio-system"
	}
	if cp.trustDomain == "" {
		cp.trustDomain = defaultTrustDomain
	}
	if cp.clusterName == "" {
		cp.clusterName = name
	}
	// istiod's plug-in CA: cacerts, read at start.
	s, err := kc.CoreV1().Secrets(cp.namespace).Get(ctx, "cacerts", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cp.cacertsOK = fmt.Errorf("%s: no secret %s/cacerts", name, cp.namespace)
	case err != nil:
		return nil, fmt.Errorf("%s: read secret %s/cacerts: %w", name, cp.namespace, err)
	default:
		cp.cacertsOK = cp.loadCACerts(name, s.Data)
	}
	secrets, err := kc.CoreV1().Secrets(cp.namespace).List(ctx, metav1.ListOptions{LabelSelector: multiClusterLabel + "=true"})
	if err != nil {
		return nil, fmt.Errorf("%s: list remote secrets in %s: %w", name, cp.namespace, err)
	}
	for _, s := range secrets.Items {
		target := s.Annotations[clusterAnnotation]
		for _, data := range s.Data {
			cp.secrets = append(cp.secrets, remoteSecret{name: s.Namespace + "/" + s.Name, target: target, data: data})
			break
		}
	}
	return cp, nil
}

func (cp *controlPlane) loadCACerts(name string, data map[string][]byte) error {
	cc, err := pki.ParseCACerts(data)
	if err != nil {
		return fmt.Errorf("%s: secret %s/cacerts: %w", name, cp.namespace, err)
	}
	is, err := pki.NewIssuer(cc, 0)
	if err != nil {
		return fmt.Errorf("%s: secret %s/cacerts: %w", name, cp.namespace, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cc.RootCert) {
		return fmt.Errorf("%s: secret %s/cacerts: root-cert.pem holds no certificate", name, cp.namespace)
	}
	cp.issuer, cp.roots, cp.rootsPEM = is, pool, string(cc.RootCert)
	return nil
}

// readGateways finds gateway Services (label istio) in ns with a load
// balancer address, and the Gateway resources that select them.
func readGateways(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface, ns string) ([]gatewayInfo, error) {
	svcs, err := kc.CoreV1().Services(ns).List(ctx, metav1.ListOptions{LabelSelector: "istio"})
	if err != nil {
		return nil, fmt.Errorf("%s: list gateway services in %s: %w", name, ns, err)
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
				switch {
				case port == crossNetworkPort && mode == "AUTO_PASSTHROUGH":
					g.crossNetwork = true
				case port == istiodPort:
					g.istiod = true
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

// hasProxy says whether the injector of a cluster's control plane gave pod
// a sidecar: the namespace selects the control plane's revision and the pod
// does not opt out.
func (v *clusterView) hasProxy(p *corev1.Pod) bool {
	if v.cp == nil || p.Labels[injectPodLabel] == "false" {
		return false
	}
	nsl := v.namespaces[p.Namespace]
	if rev, ok := nsl[revisionLabel]; ok {
		return rev == v.cp.revision
	}
	return nsl[injectionLabel] == "enabled" && v.cp.revision == defaultRevision
}

// podHasSidecar is what anyone reading a pod sees of its injection: the
// istio-proxy container or the injector's status annotation.
func podHasSidecar(p *corev1.Pod) bool {
	if p.Annotations[sidecarStatus] != "" {
		return true
	}
	for _, c := range p.Spec.Containers {
		if c.Name == "istio-proxy" {
			return true
		}
	}
	return false
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

// endpoint is one ready address of a service, as istiod would list it.
type endpoint struct {
	cluster string
	ip      string
	port    int32
	pod     string // namespace/name
	sa      string
	network string
	mtls    bool // the pod has a sidecar: auto mTLS
}

// listEndpoints reads a service's ready endpoints in one cluster, with what
// istiod learns about each: the pod's service account, sidecar and network
// (the pod's network label, else the cluster's control-plane namespace's).
func listEndpoints(ctx context.Context, cluster string, kc kubernetes.Interface, ns, svc, portName, cpNamespace string) ([]endpoint, error) {
	slices, err := kc.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, fmt.Errorf("%s: list endpointslices %s/%s: %w", cluster, ns, svc, err)
	}
	if len(slices.Items) == 0 {
		return nil, nil
	}
	pods, err := kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list pods in %s: %w", cluster, ns, err)
	}
	byName := map[string]*corev1.Pod{}
	for i := range pods.Items {
		byName[pods.Items[i].Name] = &pods.Items[i]
	}
	clusterNet := ""
	if cpNamespace != "" {
		nsObj, err := kc.CoreV1().Namespaces().Get(ctx, cpNamespace, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%s: read namespace %s: %w", cluster, cpNamespace, err)
		}
		if err == nil {
			clusterNet = nsObj.Labels[networkLabel]
		}
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
			ep := endpoint{cluster: cluster, ip: e.Addresses[0], port: port, network: clusterNet}
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				ep.pod = ns + "/" + e.TargetRef.Name
				if p := byName[e.TargetRef.Name]; p != nil {
					ep.sa = p.Spec.ServiceAccountName
					ep.mtls = podHasSidecar(p)
					if n := p.Labels[networkLabel]; n != "" {
						ep.network = n
					}
				}
			}
			if ep.sa == "" {
				ep.sa = "default"
			}
			out = append(out, ep)
		}
	}
	return out, nil
}

// networkGateways lists the cross-network gateway addresses a cluster
// offers, by network, as istiod learns them: Services labelled with a
// network and with a load-balancer address, in the control-plane namespace.
func networkGateways(ctx context.Context, cluster string, kc kubernetes.Interface, cpNamespace string) (map[string][]string, error) {
	svcs, err := kc.CoreV1().Services(cpNamespace).List(ctx, metav1.ListOptions{LabelSelector: networkLabel})
	if err != nil {
		return nil, fmt.Errorf("%s: list services in %s: %w", cluster, cpNamespace, err)
	}
	out := map[string][]string{}
	for _, s := range svcs.Items {
		if a := lbAddress(&s); a != "" {
			hasTLS := false
			for _, p := range s.Spec.Ports {
				hasTLS = hasTLS || p.Port == crossNetworkPort
			}
			if hasTLS {
				out[s.Labels[networkLabel]] = append(out[s.Labels[networkLabel]], a)
			}
		}
	}
	return out, nil
}
