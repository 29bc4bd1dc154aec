package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/emulator/workloadapi"
)

// addressType is the workload discovery type ztunnel subscribes to over
// delta xDS (pilot/pkg/model v3.AddressType).
const addressType = "type.googleapis.com/istio.workload.Address"

// hbonePort is where ztunnel takes HBONE (mTLS, HTTP/2 CONNECT) for the
// pods it serves.
const hbonePort = 15008

// Labels ambient mode reads (istio.io/dataplane-mode on a namespace or
// pod), and the annotation istio-cni's node agent writes on a pod once it
// redirected its traffic to the node's ztunnel: istiod's workload view
// gives such a pod tunnel protocol HBONE.
const (
	dataplaneModeLabel        = "istio.io/dataplane-mode"
	dataplaneAmbient          = "ambient"
	ambientRedirection        = "ambient.istio.io/redirection"
	ambientRedirectionEnabled = "enabled"
	cniNodeLabel              = "k8s-app"
	cniNodeValue              = "istio-cni-node"
)

// ztunnel plays one ztunnel DaemonSet pod: it connects to
// istiod as that pod (XDS_ADDRESS and CA_ADDRESS from its container, a
// token of its service account for audience istio-ca bound to it, as the
// chart's istio-token volume is), keeps istiod's workload view from the
// delta WDS stream, and asks istiod's CA for the certificates of the pods
// on its node by impersonation (ImpersonatedIdentity, which istiod allows
// for CA_TRUSTED_NODE_ACCOUNTS and pods on the caller's node).
type ztunnel struct {
	cluster string
	kube    kubernetes.Interface
	pod     *corev1.Pod
	env     map[string]string
	cancel  context.CancelFunc
	done    chan struct{}
	kick    func()
	logf    func(string, ...any)

	mu          sync.Mutex
	conn        *grpc.ClientConn // the current session's, nil between sessions
	addrs       map[string]*workloadapi.Address
	certs       map[string]*tls.Certificate // by SPIFFE identity
	roots       *x509.CertPool
	connected   bool // the current stream has had a response
	responses   int
	trustDomain string
	err         error
}

// isZtunnelPod says whether p is a pod of the ztunnel chart's DaemonSet.
// Its container is named istio-proxy too, but it is no sidecar.
func isZtunnelPod(p *corev1.Pod) bool {
	return p.Labels["app"] == "ztunnel" && p.Labels["app.kubernetes.io/name"] == "ztunnel"
}

// ambientPod says whether ambient mode captures p: its namespace (or the
// pod itself) says istio.io/dataplane-mode=ambient, the pod does not opt
// out with none, and it has no sidecar.
func ambientPod(v *clusterView, p *corev1.Pod) bool {
	if sidecarContainer(p) != nil || isZtunnelPod(p) || p.Spec.HostNetwork {
		return false
	}
	if m, ok := p.Labels[dataplaneModeLabel]; ok {
		return m == dataplaneAmbient
	}
	return v.namespaces[p.Namespace][dataplaneModeLabel] == dataplaneAmbient
}

func (z *ztunnel) name() string {
	return z.cluster + "/" + z.pod.Namespace + "/" + z.pod.Name
}

func (z *ztunnel) ready() bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.connected
}

func (z *ztunnel) setErr(err error) {
	z.mu.Lock()
	z.err = err
	z.mu.Unlock()
}

// run keeps the ztunnel's session with istiod until ctx ends, reconnecting
// after a failure.
func (z *ztunnel) run(ctx context.Context) {
	defer close(z.done)
	xdsAddr, caAddr := z.env["XDS_ADDRESS"], z.env["CA_ADDRESS"]
	if xdsAddr == "" {
		xdsAddr = defaultDiscoveryAddress
	}
	if caAddr == "" {
		caAddr = xdsAddr
	}
	if caAddr != xdsAddr {
		z.setErr(fmt.Errorf("ztunnel %s: CA_ADDRESS %s differs from XDS_ADDRESS %s: not played", z.name(), caAddr, xdsAddr))
		return
	}
	for backoff := time.Second; ctx.Err() == nil; {
		err := z.session(ctx, xdsAddr)
		if ctx.Err() != nil {
			return
		}
		z.setErr(err)
		z.logf("ztunnel %s: %v (retrying in %s)", z.name(), err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (z *ztunnel) session(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("istiod address %q: %w", addr, err)
	}
	dial, err := resolveService(ctx, z.cluster, z.kube, host, port)
	if err != nil {
		return err
	}
	// The chart mounts istio-ca-root-cert of the ztunnel's namespace.
	roots, err := caRoots(ctx, z.cluster, z.kube, z.pod.Namespace)
	if err != nil {
		return err
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient("passthrough:///"+dial, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("istiod %s (%s): %w", addr, dial, err)
	}
	defer conn.Close()
	z.mu.Lock()
	z.conn = conn
	z.mu.Unlock()
	defer func() {
		z.mu.Lock()
		z.conn, z.connected = nil, false
		z.mu.Unlock()
	}()
	return z.wds(ctx, conn, dial)
}

// metadataCtx carries the ztunnel pod's token and its cluster ID, as
// ztunnel sends them on every call to istiod.
func (z *ztunnel) metadataCtx(ctx context.Context) (context.Context, error) {
	sa := z.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := z.kube.CoreV1().ServiceAccounts(z.pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{caAudience},
		ExpirationSeconds: ptr(int64(43200)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: z.pod.Name, UID: z.pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: token for serviceaccount %s/%s: %w", z.cluster, z.pod.Namespace, sa, err)
	}
	md := metadata.Pairs("authorization", "Bearer "+tr.Status.Token)
	if id := z.env["ISTIO_META_CLUSTER_ID"]; id != "" {
		md.Set("ClusterID", id)
	}
	return metadata.NewOutgoingContext(ctx, md), nil
}

// node is the xDS node ztunnel announces: type ztunnel, its own pod's
// address, name and namespace, and the metadata istiod checks the caller's
// identity against (NAMESPACE, SERVICE_ACCOUNT).
func (z *ztunnel) node() (*corev3.Node, error) {
	p := z.pod
	meta := map[string]any{
		"NAME":            p.Name,
		"NAMESPACE":       p.Namespace,
		"SERVICE_ACCOUNT": p.Spec.ServiceAccountName,
		"NODE_NAME":       p.Spec.NodeName,
		"INSTANCE_IPS":    p.Status.PodIP,
		"CLUSTER_ID":      z.env["ISTIO_META_CLUSTER_ID"],
		"ENABLE_HBONE":    "true",
	}
	if n := z.env["NETWORK"]; n != "" {
		meta["NETWORK"] = n
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	return &corev3.Node{
		Id:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", p.Status.PodIP, p.Name, p.Namespace, p.Namespace),
		Metadata: st,
	}, nil
}

// wds follows the delta stream of istio.workload.Address: a wildcard
// subscription, every response applied (added or replaced by name,
// removed by name) and acknowledged.
func (z *ztunnel) wds(ctx context.Context, conn *grpc.ClientConn, dial string) error {
	node, err := z.node()
	if err != nil {
		return err
	}
	sctx, err := z.metadataCtx(ctx)
	if err != nil {
		return err
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		return fmt.Errorf("istiod delta ADS: %w", err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: addressType}); err != nil {
		return fmt.Errorf("istiod delta ADS: %w", err)
	}
	fresh := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("istiod delta ADS: %w", err)
		}
		if resp.TypeUrl != addressType {
			continue
		}
		got := map[string]*workloadapi.Address{}
		for _, r := range resp.Resources {
			a := &workloadapi.Address{}
			if r.Resource == nil {
				continue
			}
			if err := r.Resource.UnmarshalTo(a); err != nil {
				return fmt.Errorf("istiod WDS: address %s: %w", r.Name, err)
			}
			got[r.Name] = a
		}
		z.mu.Lock()
		if fresh {
			// A new wildcard stream starts from istiod's full state.
			z.addrs, fresh = map[string]*workloadapi.Address{}, false
		}
		for n, a := range got {
			z.addrs[n] = a
		}
		for _, n := range resp.RemovedResources {
			delete(z.addrs, n)
		}
		first := !z.connected
		z.connected, z.err = true, nil
		z.responses++
		z.mu.Unlock()
		z.logf("ztunnel %s: WDS from istiod %s: %d addresses (+%d -%d)%s", z.name(), dial, z.count(), len(got), len(resp.RemovedResources), describe(got))
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: addressType, ResponseNonce: resp.Nonce}); err != nil {
			return fmt.Errorf("istiod delta ADS: %w", err)
		}
		if first {
			z.kick()
		}
	}
}

func (z *ztunnel) count() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return len(z.addrs)
}

// describe lists the workloads and services of a WDS response, for the log.
func describe(got map[string]*workloadapi.Address) string {
	var parts []string
	for _, a := range got {
		if w := a.GetWorkload(); w != nil {
			d := fmt.Sprintf("workload %s/%s %s %s network %q cluster %q", w.Namespace, w.Name, ips(w.Addresses), w.TunnelProtocol, w.Network, w.ClusterId)
			if g := w.NetworkGateway; g != nil {
				d += fmt.Sprintf(" network gateway %s:%d", gatewayDest(g), g.HboneMtlsPort)
			}
			if len(w.Services) > 0 {
				d += fmt.Sprintf(" services %v", slices.Sorted(maps.Keys(w.Services)))
			}
			parts = append(parts, d)
		}
		if s := a.GetService(); s != nil {
			parts = append(parts, fmt.Sprintf("service %s/%s", s.Namespace, s.Hostname))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, "; ")
}

// gatewayDest is a network gateway's address or hostname, for the log.
func gatewayDest(g *workloadapi.GatewayAddress) string {
	if a := g.GetAddress(); a != nil {
		if ip, ok := netip.AddrFromSlice(a.Address); ok {
			return a.Network + "/" + ip.String()
		}
	}
	if h := g.GetHostname(); h != nil {
		return h.Namespace + "/" + h.Hostname
	}
	return "?"
}

func ips(addrs [][]byte) string {
	var out []string
	for _, b := range addrs {
		if a, ok := netip.AddrFromSlice(b); ok {
			out = append(out, a.String())
		}
	}
	return strings.Join(out, ",")
}

// workloadByIP is the workload istiod's view has at ip, nil when none.
func (z *ztunnel) workloadByIP(ip string) *workloadapi.Workload {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, a := range z.addrs {
		w := a.GetWorkload()
		if w == nil {
			continue
		}
		for _, b := range w.Addresses {
			if got, ok := netip.AddrFromSlice(b); ok && got == want {
				return w
			}
		}
	}
	return nil
}

// backend is one workload a service port leads to; gateway is set for a
// workload of another network (istiod's coalesced workload for that
// network, behind its east-west gateway).
type backend struct {
	w       *workloadapi.Workload
	ip      string
	port    uint32
	gateway *workloadapi.GatewayAddress
}

// service finds the service of hostname in istiod's view and the healthy
// workloads behind its port, with the port each takes it on.
func (z *ztunnel) service(hostname string, port uint32) (*workloadapi.Service, []backend) {
	z.mu.Lock()
	defer z.mu.Unlock()
	var svc *workloadapi.Service
	for _, a := range z.addrs {
		if s := a.GetService(); s != nil && s.Hostname == hostname {
			svc = s
		}
	}
	if svc == nil {
		return nil, nil
	}
	target := port
	for _, p := range svc.Ports {
		if p.ServicePort == port && p.TargetPort != 0 {
			target = p.TargetPort
		}
	}
	key := svc.Namespace + "/" + svc.Hostname
	var out []backend
	for _, a := range z.addrs {
		w := a.GetWorkload()
		if w == nil || w.Status != workloadapi.WorkloadStatus_HEALTHY {
			continue
		}
		pl, ok := w.Services[key]
		if !ok {
			continue
		}
		tp := target
		for _, p := range pl.Ports {
			if p.ServicePort == port && p.TargetPort != 0 {
				tp = p.TargetPort
			}
		}
		if w.Network != "" && w.Network != z.env["NETWORK"] {
			// Reached through its network's gateway only, never
			// directly; ztunnel refuses one without a gateway.
			if w.NetworkGateway == nil {
				continue
			}
			// As many turns as the workloads it stands for (capacity).
			n := max(int(w.GetCapacity().GetValue()), 1)
			for range n {
				out = append(out, backend{w: w, port: tp, gateway: w.NetworkGateway})
			}
			continue
		}
		if len(w.Addresses) == 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(w.Addresses[0])
		if !ok {
			continue
		}
		out = append(out, backend{w: w, ip: ip.String(), port: tp})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ip < out[j].ip })
	return svc, out
}

// identity is a workload's SPIFFE identity.
func (z *ztunnel) identity(w *workloadapi.Workload) pki.SPIFFEID {
	td := w.TrustDomain
	if td == "" {
		td = defaultTrustDomain
	}
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return pki.SPIFFEID{TrustDomain: td, Namespace: w.Namespace, ServiceAccount: sa}
}

// certFor is the certificate of w's identity, from istiod's CA by
// impersonation, renewed at half its life; and the roots istiod's CA
// returned with it.
func (z *ztunnel) certFor(ctx context.Context, w *workloadapi.Workload) (*tls.Certificate, *x509.CertPool, error) {
	id := z.identity(w)
	z.mu.Lock()
	c, conn, roots := z.certs[id.String()], z.conn, z.roots
	z.mu.Unlock()
	if c != nil && time.Now().Before(c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)/2)) {
		return c, roots, nil
	}
	if conn == nil {
		return nil, nil, fmt.Errorf("ztunnel %s: not connected to istiod", z.name())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}}, key)
	if err != nil {
		return nil, nil, err
	}
	cctx, err := z.metadataCtx(ctx)
	if err != nil {
		return nil, nil, err
	}
	md, err := structpb.NewStruct(map[string]any{"ImpersonatedIdentity": id.String()})
	if err != nil {
		return nil, nil, err
	}
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(cctx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		ValidityDuration: int64(certTTL / time.Second),
		Metadata:         md,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ztunnel %s: istiod CA: certificate for %s (impersonated): %w", z.name(), id, err)
	}
	if len(resp.CertChain) < 2 {
		return nil, nil, fmt.Errorf("ztunnel %s: istiod CA: certificate for %s: %d chain elements, want the chain and the root bundle", z.name(), id, len(resp.CertChain))
	}
	var chain []*x509.Certificate
	for _, p := range resp.CertChain[:len(resp.CertChain)-1] {
		certs, err := parseCerts([]byte(p))
		if err != nil {
			return nil, nil, fmt.Errorf("ztunnel %s: istiod CA: certificate for %s: %w", z.name(), id, err)
		}
		chain = append(chain, certs...)
	}
	rootCerts, err := parseCerts([]byte(resp.CertChain[len(resp.CertChain)-1]))
	if err != nil || len(chain) == 0 || len(rootCerts) == 0 {
		return nil, nil, fmt.Errorf("ztunnel %s: istiod CA: certificate for %s: no chain or root bundle (%v)", z.name(), id, err)
	}
	pool := x509.NewCertPool()
	for _, r := range rootCerts {
		pool.AddCert(r)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	z.mu.Lock()
	if z.certs == nil {
		z.certs = map[string]*tls.Certificate{}
	}
	z.certs[id.String()] = tc
	z.roots = pool
	z.mu.Unlock()
	z.logf("ztunnel %s: certificate for %s from istiod's CA (impersonated), serial %s", z.name(), id, chain[0].SerialNumber.Text(16))
	return tc, pool, nil
}

// redirected says whether istio-cni handed the pod's traffic to its
// node's ztunnel: only then does ztunnel carry its calls and take its
// HBONE.
func redirected(p *corev1.Pod) bool {
	return p.Annotations[ambientRedirection] == ambientRedirectionEnabled
}

// cniOnNode says whether an istio-cni node pod runs on node: without one,
// nothing redirects an ambient pod's traffic (no CNI plugin), and the pod
// starts as any other.
func cniOnNode(v *clusterView, node string) bool {
	for i := range v.pods {
		q := &v.pods[i]
		if running(q) && q.Labels[cniNodeLabel] == cniNodeValue && q.Spec.NodeName == node {
			return true
		}
	}
	return false
}

// redirectToZtunnel plays istio-cni's node agent for an ambient pod on a
// node where istio-cni runs: once that node's ztunnel has istiod's view,
// the pod's traffic goes to that ztunnel, and the agent annotates the pod
// so (the annotation istiod reads). Until then the pod is not ready, as
// istio-cni's plugin holds a pod back while the node's ztunnel is not.
func (e *Emulator) redirectToZtunnel(ctx context.Context, v *clusterView, p *corev1.Pod) {
	if v == nil || !cniOnNode(v, p.Spec.NodeName) {
		return
	}
	z := e.ztunnelFor(v.name, p.Spec.NodeName)
	if z == nil || !z.ready() {
		return
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         p.UID,
		"annotations": map[string]string{ambientRedirection: ambientRedirectionEnabled},
	}})
	m := e.member(v.name)
	if _, err := m.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			e.logf("%s: istio-cni: annotate pod %s/%s %s: %v", v.name, p.Namespace, p.Name, ambientRedirection, err)
		}
		return
	}
	e.logf("%s: istio-cni: pod %s/%s redirected to ztunnel %s", v.name, p.Namespace, p.Name, z.name())
}

// targetPort is the port w takes service hostname's port on, 0 when w is
// no endpoint of that service in istiod's view.
func (z *ztunnel) targetPort(w *workloadapi.Workload, hostname string, port uint32) uint32 {
	z.mu.Lock()
	defer z.mu.Unlock()
	for key, pl := range w.Services {
		if _, h, _ := strings.Cut(key, "/"); h != hostname {
			continue
		}
		for _, p := range pl.Ports {
			if p.ServicePort == port {
				if p.TargetPort != 0 {
					return p.TargetPort
				}
				return port
			}
		}
		return port
	}
	return 0
}

// gatewayWorkload is the workload istiod's view has for a network gateway
// address (its NetworkGateway/<network>/<address>/<port> workload), whose
// identity the gateway presents.
func (z *ztunnel) gatewayWorkload(g *workloadapi.GatewayAddress) (*workloadapi.Workload, string) {
	a := g.GetAddress()
	if a == nil {
		return nil, ""
	}
	ip, ok := netip.AddrFromSlice(a.Address)
	if !ok {
		return nil, ""
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, addr := range z.addrs {
		w := addr.GetWorkload()
		if w == nil || !strings.HasPrefix(w.Uid, "NetworkGateway/") {
			continue
		}
		for _, b := range w.Addresses {
			if got, ok := netip.AddrFromSlice(b); ok && got == ip {
				return w, ip.String()
			}
		}
	}
	return nil, ip.String()
}
