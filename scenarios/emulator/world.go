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
	// The external istiod's config-cluster kubeconfig (istioctl
	// create-remote-secret --type=config), mounted by istiod's chart.
	configSecret    = "istio-kubeconfig"
	configSecretKey = "config"
)

var (
	sailIstioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
	gatewayGVR   = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}
	// virtualServiceGVR: what a gateway does with a port it opens.
	virtualServiceGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
)

// controlPlane is one Sail Istio resource of a cluster and what its istiod
// (when it runs one) would load with it.
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
	// pilotEnabled is values.pilot.enabled when set.
	pilotEnabled *bool
	// defaultRevision is values.defaultRevision: the revision that
	// istio-injection=enabled selects in this cluster.
	defaultRevision string
	// env is values.pilot.env, istiod's environment.
	env map[string]string

	issuer    *pki.Issuer // nil: no usable cacerts (cacertsOK says why)
	roots     *x509.CertPool
	rootsPEM  string
	cacertsOK error
	// nsNetwork is the control-plane namespace's network label.
	nsNetwork string
	// secrets are the remote secrets in the control-plane namespace.
	secrets []remoteSecret
	// configKubeconfig is secret istio-kubeconfig's key config in the
	// control-plane namespace: istiod's chart mounts it and points
	// KUBECONFIG at it, so istiod reads its config cluster through it.
	// nil: istiod reads the cluster it runs in.
	configKubeconfig *remoteSecret
}

func (cp *controlPlane) remote() bool { return cp.profile == "remote" || cp.remotePilotAddress != "" }

// runsIstiod: the resource deploys an istiod (the empty profile only with
// pilot enabled).
func (cp *controlPlane) runsIstiod() bool {
	if cp.remote() {
		return false
	}
	if cp.pilotEnabled != nil {
		return *cp.pilotEnabled
	}
	return cp.profile != "empty"
}

// istiodService is the Service in front of the revision's istiod.
func (cp *controlPlane) istiodService() string {
	if cp.revision == defaultRevision {
		return "istiod"
	}
	return "istiod-" + cp.revision
}

// clusterID is the cluster istiod calls its own (its config cluster).
func (cp *controlPlane) clusterID() string {
	if id := cp.env["CLUSTER_ID"]; id != "" {
		return id
	}
	return cp.clusterName
}

// localSecretWatcher: istiod watches remote secrets in the cluster it runs
// in rather than in its config cluster (Istio's LOCAL_CLUSTER_SECRET_WATCHER,
// honoured only with EXTERNAL_ISTIOD).
func (cp *controlPlane) localSecretWatcher() bool {
	return cp.env["EXTERNAL_ISTIOD"] == "true" && cp.env["LOCAL_CLUSTER_SECRET_WATCHER"] == "true"
}

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
	// istiodHost is where a VirtualService bound to a Gateway that opens
	// 15012 on it routes that port: host[.namespace[.svc.cluster.local]].
	istiodHost string
	// istiodHostNS is that VirtualService's namespace, for a short host.
	istiodHostNS string
	// ports are the Service's ports with a numeric target port.
	ports []servicePort
}

type servicePort struct{ port, target int32 }

// clusterView is one lab cluster as its own components (kubelet, kube-proxy,
// an in-cluster istiod) see it, read with the emulator's admin connection.
type clusterView struct {
	name string
	// cps are the cluster's Istio resources; cp is its main one: "default"
	// when there is one, else the first (a data-plane cluster's external-istiod).
	cps        []*controlPlane
	cp         *controlPlane
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
	v.cps, err = readControlPlanes(ctx, name, kc, dyn)
	if err != nil {
		return nil, err
	}
	if len(v.cps) == 0 {
		return v, nil
	}
	v.cp = v.cps[0]
	for _, cp := range v.cps {
		cp.nsNetwork = v.namespaces[cp.namespace][networkLabel]
		if cp.revision == defaultRevision {
			v.cp = cp
		}
	}
	v.gateways, err = readGateways(ctx, name, kc, dyn)
	if err != nil {
		return v, err
	}
	v.eastWest, err = readEastWestGateways(ctx, name, dyn)
	return v, err
}

// readControlPlanes reads every Sail Istio resource of a cluster, with the
// secrets its istiod would load from its namespace.
func readControlPlanes(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface) ([]*controlPlane, error) {
	list, err := dyn.Resource(sailIstioGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list Istio resources: %w", name, err)
	}
	var out []*controlPlane
	for _, u := range list.Items {
		cp, err := readControlPlane(ctx, name, kc, u)
		if err != nil {
			return nil, err
		}
		out = append(out, cp)
	}
	return out, nil
}

func readControlPlane(ctx context.Context, name string, kc kubernetes.Interface, u unstructured.Unstructured) (*controlPlane, error) {
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
		defaultRevision:    str("spec", "values", "defaultRevision"),
		env:                map[string]string{},
	}
	if b, ok, _ := unstructured.NestedBool(u.Object, "spec", "values", "pilot", "enabled"); ok {
		cp.pilotEnabled = &b
	}
	env, _, _ := unstructured.NestedMap(u.Object, "spec", "values", "pilot", "env")
	for k, v := range env {
		cp.env[k] = fmt.Sprint(v)
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
	// istiod's plug-in CA: cacerts in its own namespace, read at start.
	s, err := kc.CoreV1().Secrets(cp.namespace).Get(ctx, "cacerts", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cp.cacertsOK = fmt.Errorf("%s: no secret %s/cacerts", name, cp.namespace)
	case err != nil:
		return nil, fmt.Errorf("%s: read secret %s/cacerts: %w", name, cp.namespace, err)
	default:
		cp.cacertsOK = cp.loadCACerts(name, s.Data)
	}
	cfg, err := kc.CoreV1().Secrets(cp.namespace).Get(ctx, configSecret, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("%s: read secret %s/%s: %w", name, cp.namespace, configSecret, err)
	case len(cfg.Data[configSecretKey]) > 0:
		cp.configKubeconfig = &remoteSecret{name: name + ":" + cp.namespace + "/" + configSecret, target: cp.clusterID(), data: cfg.Data[configSecretKey]}
	}
	secrets, err := kc.CoreV1().Secrets(cp.namespace).List(ctx, metav1.ListOptions{LabelSelector: multiClusterLabel + "=true"})
	if err != nil {
		return nil, fmt.Errorf("%s: list remote secrets in %s: %w", name, cp.namespace, err)
	}
	cp.secrets = remoteSecrets(name, secrets.Items)
	return cp, nil
}

// remoteSecrets takes each secret's one kubeconfig, as istiod does.
func remoteSecrets(cluster string, items []corev1.Secret) []remoteSecret {
	var out []remoteSecret
	for _, s := range items {
		target := s.Annotations[clusterAnnotation]
		for _, data := range s.Data {
			out = append(out, remoteSecret{name: cluster + ":" + s.Namespace + "/" + s.Name, target: target, data: data})
			break
		}
	}
	return out
}

// injector is the control plane whose injector gives pod its sidecar: the
// revision its namespace selects (istio.io/rev, or istio-injection=enabled
// for the default revision or the one values.defaultRevision names), unless
// the pod opts out. nil: no sidecar.
func (v *clusterView) injector(p *corev1.Pod) *controlPlane {
	if p.Labels[injectPodLabel] == "false" {
		return nil
	}
	nsl := v.namespaces[p.Namespace]
	rev, ok := nsl[revisionLabel]
	if !ok {
		if nsl[injectionLabel] != "enabled" {
			return nil
		}
		rev = defaultRevision
		for _, cp := range v.cps {
			if cp.defaultRevision != "" && cp.defaultRevision == cp.revision {
				rev = cp.revision
			}
		}
	}
	for _, cp := range v.cps {
		if cp.revision == rev {
			return cp
		}
	}
	return nil
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

// readGateways finds gateway Services (label istio) with a load balancer
// address, the Gateway resources that select them and, for 15012, the
// VirtualService that routes it.
func readGateways(ctx context.Context, name string, kc kubernetes.Interface, dyn dynamic.Interface) ([]gatewayInfo, error) {
	svcs, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: "istio"})
	if err != nil {
		return nil, fmt.Errorf("%s: list gateway services: %w", name, err)
	}
	gws, err := dyn.Resource(gatewayGVR).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list Istio Gateways: %w", name, err)
	}
	vss, err := dyn.Resource(virtualServiceGVR).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list Istio VirtualServices: %w", name, err)
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
				switch {
				case port == crossNetworkPort && mode == "AUTO_PASSTHROUGH":
					g.crossNetwork = true
				case port == istiodPort && g.istiodHost == "":
					g.istiodHost, g.istiodHostNS = routeFor(vss.Items, gw.GetNamespace(), gw.GetName(), istiodPort)
				}
			}
		}
		out = append(out, g)
	}
	return out, nil
}

// routeFor is the destination host of the first tls or tcp route, of a
// VirtualService bound to Gateway gwNS/gwName, that matches port (or any
// port); "" when none routes it, and the VirtualService's namespace.
func routeFor(vss []unstructured.Unstructured, gwNS, gwName string, port int64) (string, string) {
	for _, vs := range vss {
		bound := false
		refs, _, _ := unstructured.NestedStringSlice(vs.Object, "spec", "gateways")
		for _, ref := range refs {
			ns, n, ok := strings.Cut(ref, "/")
			if !ok {
				ns, n = vs.GetNamespace(), ref
			}
			bound = bound || ns == gwNS && n == gwName
		}
		if !bound {
			continue
		}
		for _, kind := range []string{"tls", "tcp"} {
			routes, _, _ := unstructured.NestedSlice(vs.Object, "spec", kind)
			for _, raw := range routes {
				r, _ := raw.(map[string]any)
				matches, _, _ := unstructured.NestedSlice(r, "match")
				ok := len(matches) == 0
				for _, m := range matches {
					mp, _, _ := unstructured.NestedInt64(m.(map[string]any), "port")
					ok = ok || mp == 0 || mp == port
				}
				dests, _, _ := unstructured.NestedSlice(r, "route")
				if !ok || len(dests) == 0 {
					continue
				}
				host, _, _ := unstructured.NestedString(dests[0].(map[string]any), "destination", "host")
				if host != "" {
					return host, vs.GetNamespace()
				}
			}
		}
	}
	return "", ""
}

// serviceOf splits a destination host into service and namespace: name,
// name.ns, name.ns.svc[.cluster.local]; a short name is in defaultNS.
func serviceOf(host, defaultNS string) (string, string) {
	parts := strings.Split(host, ".")
	if len(parts) == 1 {
		return parts[0], defaultNS
	}
	return parts[0], parts[1]
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
