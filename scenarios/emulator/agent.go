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
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// The emulator plays istio-agent for every pod that
// carries an istio-proxy container: it reads the container the injector
// wrote (CA_ADDR, PROXY_CONFIG's discoveryAddress, ISTIO_META_*,
// TRUST_DOMAIN), asks that istiod's CA for the workload certificate and
// holds an ADS stream to that istiod as the pod's proxy. What the proxy
// then does (which endpoint, mTLS or not, through which gateway) is read
// from the clusters and endpoints istiod sent, never from the emulator's
// own reading of the clusters.

// xDS type URLs the agent subscribes to, as Envoy does for outbound traffic.
const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// defaultDiscoveryAddress is pilot-agent's istiod when the pod names none.
const defaultDiscoveryAddress = "istiod.istio-system.svc:15012"

// caAudience is the audience of the token istio-agent presents to istiod
// (the chart's istio-token volume).
const caAudience = "istio-ca"

// certTTL is what istio-agent asks for (its default SECRET_TTL).
const certTTL = 24 * time.Hour

// ProxyStatus is what one pod's proxy got from its istiod, for tests and logs.
type ProxyStatus struct {
	Cluster, Namespace, Pod string
	// NodeID is the xDS node ID the proxy connected with.
	NodeID string
	// Istiod is the address of the istiod it talks to (CA and xDS).
	Istiod string
	// Cert is the workload certificate istiod's CA issued, nil before.
	Cert *x509.Certificate
	// Certs counts certificates issued to the proxy (renewals included).
	Certs int
	// Responses counts xDS responses by type URL.
	Responses map[string]int
	// Endpoints are the addresses (host:port) of each EDS cluster.
	Endpoints map[string][]string
	// SANs are, per cluster, the peer identities its Istio mTLS transport
	// socket (the one for tlsMode istio) accepts.
	SANs map[string][]string
	// Err is the last failure, if the proxy is not (or no longer) connected.
	Err string
	// Ready: the proxy holds its certificate and istiod's clusters and
	// endpoints, as Envoy's readiness needs (a gateway's listener opens then).
	Ready bool
	// Connected: its ADS stream is up and istiod has answered on it. A
	// proxy that lost its istiod keeps its last configuration, as Envoy
	// does, but misses istiod's pushes until it reconnects.
	Connected bool
}

// agent is one pod's istio-agent and the Envoy configuration it holds.
type agent struct {
	cluster string
	kube    kubernetes.Interface
	pod     *corev1.Pod
	proxy   *corev1.Container
	cancel  context.CancelFunc
	done    chan struct{}
	kick    func()
	logf    func(string, ...any)

	mu          sync.Mutex
	addr        string // istiod, as dialled
	nodeID      string
	cert        *tls.Certificate
	roots       *x509.CertPool
	trustDomain string
	certs       int
	clusters    map[string]*clusterv3.Cluster
	loads       map[string]*endpointv3.ClusterLoadAssignment
	listeners   map[string]*listenerv3.Listener // a router's (passthrough.go)
	responses   map[string]int
	err         error
	crl         crlCache // the CRLs its Envoy holds (crl.go)
	connected   bool     // the current ADS stream has had a response
}

// sidecarContainer is the pod's istio-proxy container, a native sidecar
// (an init container that always restarts) or a classic one; nil without.
func sidecarContainer(p *corev1.Pod) *corev1.Container {
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		if c.Name == "istio-proxy" && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return c
		}
	}
	for i := range p.Spec.Containers {
		if c := &p.Spec.Containers[i]; c.Name == "istio-proxy" {
			return c
		}
	}
	return nil
}

// proxyEnv is the container's literal environment; the downward-API
// values the agent needs are taken from the pod itself.
func proxyEnv(c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	return env
}

// ready: the proxy holds a certificate and istiod's clusters, and the
// endpoints of every EDS cluster among them (Envoy's initial fetch).
func (a *agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert == nil || a.responses[clusterType] == 0 {
		return false
	}
	for _, name := range edsNames(a.clusters) {
		if a.loads[name] == nil {
			return false
		}
	}
	return true
}

func (a *agent) status() ProxyStatus {
	ready := a.ready()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := ProxyStatus{Cluster: a.cluster, Namespace: a.pod.Namespace, Pod: a.pod.Name, NodeID: a.nodeID, Istiod: a.addr,
		Certs: a.certs, Responses: map[string]int{}, Endpoints: map[string][]string{}, SANs: map[string][]string{}, Ready: ready, Connected: a.connected}
	if a.cert != nil {
		s.Cert = a.cert.Leaf
	}
	for k, v := range a.responses {
		s.Responses[k] = v
	}
	for name, cla := range a.loads {
		for _, ep := range claEndpoints(cla) {
			s.Endpoints[name] = append(s.Endpoints[name], net.JoinHostPort(ep.ip, strconv.Itoa(int(ep.port))))
		}
	}
	for name, c := range a.clusters {
		if up, err := upstreamTLS(c, xdsEndpoint{match: map[string]string{"tlsMode": "istio"}}); err == nil && up != nil {
			for san := range up.sans {
				s.SANs[name] = append(s.SANs[name], san)
			}
			sort.Strings(s.SANs[name])
		}
	}
	if a.err != nil {
		s.Err = a.err.Error()
	}
	return s
}

func (a *agent) setErr(err error) {
	a.mu.Lock()
	a.err = err
	a.mu.Unlock()
}

// run keeps the proxy's certificate and ADS stream until ctx ends,
// reconnecting after a failure as istio-agent does.
func (a *agent) run(ctx context.Context) {
	defer close(a.done)
	env := proxyEnv(a.proxy)
	xdsAddr := env["CA_ADDR"]
	var pc struct {
		DiscoveryAddress string `json:"discoveryAddress"`
	}
	if err := json.Unmarshal([]byte(env["PROXY_CONFIG"]), &pc); err == nil && pc.DiscoveryAddress != "" {
		xdsAddr = pc.DiscoveryAddress
	}
	if xdsAddr == "" {
		// pilot-agent's default when the container names no istiod.
		xdsAddr = defaultDiscoveryAddress
	}
	caAddr := env["CA_ADDR"]
	if caAddr == "" {
		caAddr = xdsAddr
	}
	if caAddr != xdsAddr {
		// One connection serves both in every topology the charts render
		// for a sidecar; a separate CA is not played.
		a.setErr(fmt.Errorf("%s: pod %s/%s: CA_ADDR %s differs from discoveryAddress %s: not played", a.cluster, a.pod.Namespace, a.pod.Name, caAddr, xdsAddr))
		return
	}
	td := env["TRUST_DOMAIN"]
	if td == "" {
		td = defaultTrustDomain
	}
	a.mu.Lock()
	a.trustDomain = td
	a.mu.Unlock()
	for backoff := time.Second; ctx.Err() == nil; {
		err := a.session(ctx, xdsAddr, env)
		if ctx.Err() != nil {
			return
		}
		a.setErr(err)
		a.logf("%s: proxy %s/%s: %v (retrying in %s)", a.cluster, a.pod.Namespace, a.pod.Name, err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// session dials istiod, gets a certificate and follows the ADS stream
// until either fails.
func (a *agent) session(ctx context.Context, addr string, env map[string]string) error {
	dial, serverName, err := istiodTarget(ctx, a.cluster, a.kube, addr, env)
	if err != nil {
		return err
	}
	roots, err := caRoots(ctx, a.cluster, a.kube, a.pod.Namespace)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.addr = dial
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.connected = false
		a.mu.Unlock()
	}()
	// istiod's serving certificate names its Service and its discovery
	// address, signed by its CA.
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient("passthrough:///"+dial, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("istiod %s (%s): %w", addr, dial, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	renewed := make(chan error, 1)
	if err := a.fetchCert(ctx, conn, env); err != nil {
		return err
	}
	go func() { renewed <- a.renew(ctx, conn, env) }()
	xds := make(chan error, 1)
	go func() { xds <- a.ads(ctx, conn, env) }()
	select {
	case err := <-renewed:
		return err
	case err := <-xds:
		return err
	}
}

// metadataCtx is what istio-agent sends with each call to istiod: its
// token and, for istiod's authenticator, the cluster it runs in.
func (a *agent) metadataCtx(ctx context.Context, env map[string]string) (context.Context, error) {
	tok, err := a.token(ctx)
	if err != nil {
		return nil, err
	}
	md := metadata.Pairs("authorization", "Bearer "+tok)
	if id := env["ISTIO_META_CLUSTER_ID"]; id != "" {
		md.Set("ClusterID", id)
	}
	return metadata.NewOutgoingContext(ctx, md), nil
}

// token is the pod's service-account token for istiod, bound to the pod.
func (a *agent) token(ctx context.Context) (string, error) {
	sa := a.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := a.kube.CoreV1().ServiceAccounts(a.pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{caAudience},
		ExpirationSeconds: ptr(int64(43200)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: a.pod.Name, UID: a.pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("%s: token for serviceaccount %s/%s: %w", a.cluster, a.pod.Namespace, sa, err)
	}
	return tr.Status.Token, nil
}

// fetchCert asks istiod's CA for the pod's workload certificate.
func (a *agent) fetchCert(ctx context.Context, conn *grpc.ClientConn, env map[string]string) error {
	sa := a.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	a.mu.Lock()
	id := pki.SPIFFEID{TrustDomain: a.trustDomain, Namespace: a.pod.Namespace, ServiceAccount: sa}
	a.mu.Unlock()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}}, key)
	if err != nil {
		return err
	}
	cctx, err := a.metadataCtx(ctx, env)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(cctx, 30*time.Second)
	defer cancel()
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(cctx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		ValidityDuration: int64(certTTL / time.Second),
	})
	if err != nil {
		return fmt.Errorf("istiod CA: certificate for %s: %w", id, err)
	}
	// The last element is istiod's root bundle, kept whole (it holds both
	// roots during a rotation): Envoy gets it as its validation context,
	// the elements before it as its certificate chain.
	if len(resp.CertChain) < 2 {
		return fmt.Errorf("istiod CA: certificate for %s: %d chain elements, want the chain and the root bundle", id, len(resp.CertChain))
	}
	var chain []*x509.Certificate
	for _, p := range resp.CertChain[:len(resp.CertChain)-1] {
		certs, err := parseCerts([]byte(p))
		if err != nil {
			return fmt.Errorf("istiod CA: certificate for %s: %w", id, err)
		}
		chain = append(chain, certs...)
	}
	rootCerts, err := parseCerts([]byte(resp.CertChain[len(resp.CertChain)-1]))
	if err != nil {
		return fmt.Errorf("istiod CA: certificate for %s: root bundle: %w", id, err)
	}
	if len(chain) == 0 || len(rootCerts) == 0 {
		return fmt.Errorf("istiod CA: certificate for %s: %d chain and %d root certificates", id, len(chain), len(rootCerts))
	}
	roots := x509.NewCertPool()
	for _, c := range rootCerts {
		roots.AddCert(c)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	a.mu.Lock()
	first := a.cert == nil
	a.cert, a.roots = tc, roots
	a.certs++
	a.mu.Unlock()
	if first {
		a.kick()
	}
	return nil
}

// parseCerts parses every PEM certificate in b.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// renew fetches a new certificate at half the current one's life (the
// agent's default grace ratio), until ctx ends or a renewal fails.
func (a *agent) renew(ctx context.Context, conn *grpc.ClientConn, env map[string]string) error {
	for {
		a.mu.Lock()
		leaf := a.cert.Leaf
		a.mu.Unlock()
		at := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(at)):
		}
		if err := a.fetchCert(ctx, conn, env); err != nil {
			return err
		}
	}
}

// node is the xDS node istio-agent announces for the pod.
func (a *agent) node(env map[string]string) (*corev3.Node, error) {
	p := a.pod
	// pilot-agent proxy sidecar|router: the injection template says which.
	kind := "sidecar"
	if args := a.proxy.Args; len(args) > 1 && args[0] == "proxy" {
		kind = args[1]
	}
	meta := map[string]any{}
	for k, v := range env {
		if name, ok := strings.CutPrefix(k, "ISTIO_META_"); ok {
			meta[name] = v
		}
	}
	labels := map[string]any{}
	for k, v := range p.Labels {
		labels[k] = v
	}
	meta["LABELS"] = labels
	meta["NAME"] = p.Name
	meta["NAMESPACE"] = p.Namespace
	meta["INSTANCE_IPS"] = p.Status.PodIP
	meta["SERVICE_ACCOUNT"] = p.Spec.ServiceAccountName
	meta["NODE_NAME"] = p.Spec.NodeName
	if _, tag, ok := strings.Cut(a.proxy.Image, ":"); ok {
		meta["ISTIO_VERSION"] = tag // the proxy's version, as its image names it
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	domain := p.Namespace + ".svc.cluster.local"
	return &corev3.Node{
		Id:       fmt.Sprintf("%s~%s~%s.%s~%s", kind, p.Status.PodIP, p.Name, p.Namespace, domain),
		Cluster:  env["ISTIO_META_WORKLOAD_NAME"] + "." + p.Namespace,
		Metadata: st,
	}, nil
}

// ads follows the proxy's ADS stream: every cluster (CDS), then the
// endpoints of each EDS cluster, acknowledging each response as Envoy does.
func (a *agent) ads(ctx context.Context, conn *grpc.ClientConn, env map[string]string) error {
	node, err := a.node(env)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.nodeID = node.Id
	a.mu.Unlock()
	sctx, err := a.metadataCtx(ctx, env)
	if err != nil {
		return err
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return fmt.Errorf("istiod ADS: %w", err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return fmt.Errorf("istiod ADS: %w", err)
	}
	var edsVersion, edsNonce string
	var edsWatched []string
	ldsAsked := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("istiod ADS: %w", err)
		}
		switch resp.TypeUrl {
		case clusterType:
			clusters := map[string]*clusterv3.Cluster{}
			for _, r := range resp.Resources {
				c := &clusterv3.Cluster{}
				if err := r.UnmarshalTo(c); err != nil {
					return fmt.Errorf("istiod ADS: cluster: %w", err)
				}
				clusters[c.Name] = c
			}
			a.mu.Lock()
			a.clusters = clusters
			a.responses[clusterType]++
			a.err = nil
			a.connected = true
			a.mu.Unlock()
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: clusterType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
				return fmt.Errorf("istiod ADS: %w", err)
			}
			// Envoy watches the endpoints of exactly the EDS clusters it has.
			if names := edsNames(clusters); !slices.Equal(names, edsWatched) {
				edsWatched = names
				if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: endpointType, ResourceNames: names, VersionInfo: edsVersion, ResponseNonce: edsNonce}); err != nil {
					return fmt.Errorf("istiod ADS: %w", err)
				}
			}
			// A router's listeners say what it passes through
			// (passthrough.go); Envoy asks for them after its clusters.
			if a.isRouter() && !ldsAsked {
				ldsAsked = true
				if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType}); err != nil {
					return fmt.Errorf("istiod ADS: %w", err)
				}
			}
		case endpointType:
			loads := map[string]*endpointv3.ClusterLoadAssignment{}
			for _, r := range resp.Resources {
				cla := &endpointv3.ClusterLoadAssignment{}
				if err := r.UnmarshalTo(cla); err != nil {
					return fmt.Errorf("istiod ADS: endpoints: %w", err)
				}
				loads[cla.ClusterName] = cla
			}
			a.mu.Lock()
			if a.loads == nil {
				a.loads = map[string]*endpointv3.ClusterLoadAssignment{}
			}
			for k, v := range loads {
				a.loads[k] = v
			}
			a.responses[endpointType]++
			a.mu.Unlock()
			edsVersion, edsNonce = resp.VersionInfo, resp.Nonce
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: endpointType, ResourceNames: edsWatched, VersionInfo: edsVersion, ResponseNonce: edsNonce}); err != nil {
				return fmt.Errorf("istiod ADS: %w", err)
			}
		case listenerType:
			if err := a.setListeners(resp); err != nil {
				return err
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
				return fmt.Errorf("istiod ADS: %w", err)
			}
		default:
			a.mu.Lock()
			a.responses[resp.TypeUrl]++
			a.mu.Unlock()
		}
		a.kick()
	}
}

// edsNames are the clusters whose endpoints come by EDS, sorted.
func edsNames(clusters map[string]*clusterv3.Cluster) []string {
	var out []string
	for name, c := range clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
			name = n
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// xdsEndpoint is one endpoint of an EDS cluster as istiod sent it.
type xdsEndpoint struct {
	ip   string
	port int32
	// match is its envoy.transport_socket_match metadata (istiod: tlsMode).
	match map[string]string
}

// claEndpoints lists the healthy endpoints of a load assignment.
func claEndpoints(cla *endpointv3.ClusterLoadAssignment) []xdsEndpoint {
	var out []xdsEndpoint
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			if s := lb.GetHealthStatus(); s == corev3.HealthStatus_UNHEALTHY || s == corev3.HealthStatus_DRAINING {
				continue
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			ep := xdsEndpoint{ip: sa.GetAddress(), port: int32(sa.GetPortValue()), match: map[string]string{}}
			for k, v := range lb.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"].GetFields() {
				ep.match[k] = v.GetStringValue()
			}
			out = append(out, ep)
		}
	}
	return out
}

// endpoints is what the proxy holds for an outbound cluster: the cluster
// (nil when istiod sent none) and its endpoints.
func (a *agent) endpoints(name string) (*clusterv3.Cluster, []xdsEndpoint) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.clusters[name]
	if c == nil {
		return nil, nil
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		name = n
	}
	cla := a.loads[name]
	if cla == nil {
		return c, nil
	}
	return c, claEndpoints(cla)
}

// upstreamTLS is how Envoy connects to endpoint ep of cluster c: the first
// transport socket match whose fields all equal the endpoint's metadata,
// else the cluster's transport socket. nil: plaintext; else the SNI and
// the SANs the peer must present (none: any in the trust domain).
func upstreamTLS(c *clusterv3.Cluster, ep xdsEndpoint) (*upstream, error) {
	ts := c.GetTransportSocket()
	for _, m := range c.GetTransportSocketMatches() {
		ok := true
		for k, v := range m.GetMatch().GetFields() {
			ok = ok && ep.match[k] == v.GetStringValue()
		}
		if ok {
			ts = m.GetTransportSocket()
			break
		}
	}
	if ts.GetTypedConfig() == nil || ts.GetName() != "envoy.transport_sockets.tls" {
		return nil, nil
	}
	utc := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(utc); err != nil {
		return nil, fmt.Errorf("cluster %s: upstream TLS context: %w", c.Name, err)
	}
	u := &upstream{sni: utc.GetSni(), sans: map[string]bool{}}
	cvc := utc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
	if cvc == nil {
		cvc = utc.GetCommonTlsContext().GetValidationContext()
	}
	for _, m := range cvc.GetMatchTypedSubjectAltNames() {
		if e := m.GetMatcher().GetExact(); e != "" {
			u.sans[e] = true
		}
	}
	for _, m := range cvc.GetMatchSubjectAltNames() {
		if e := m.GetExact(); e != "" {
			u.sans[e] = true
		}
	}
	return u, nil
}

// upstream is an Istio mTLS transport socket as istiod configured it.
type upstream struct {
	sni  string
	sans map[string]bool
}

// identity is the proxy's certificate and the roots it trusts.
func (a *agent) identity() (*tls.Certificate, *x509.CertPool, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert == nil {
		err := a.err
		if err == nil {
			err = errors.New("no certificate from istiod yet")
		}
		return nil, nil, "", err
	}
	return a.cert, a.roots, a.trustDomain, nil
}

// resolveService is what a pod's DNS and kube-proxy make of
// <svc>.<ns>.svc[...]:port: a ready endpoint of the Service, at its lab
// loopback stand-in.
func resolveService(ctx context.Context, cluster string, kc kubernetes.Interface, host, port string) (string, error) {
	parts := strings.Split(host, ".")
	if len(parts) < 2 || net.ParseIP(host) != nil {
		return "", fmt.Errorf("%s: istiod address %s is not a Service name: not played", cluster, host)
	}
	svcName, ns := parts[0], parts[1]
	svc, err := kc.CoreV1().Services(ns).Get(ctx, svcName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("%s: service %s/%s: %w", cluster, ns, svcName, err)
	}
	portName, found := "", false
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(int(p.Port)) == port {
			portName, found = p.Name, true
		}
	}
	if !found {
		return "", fmt.Errorf("%s: service %s/%s has no port %s", cluster, ns, svcName, port)
	}
	sls, err := kc.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svcName})
	if err != nil {
		return "", fmt.Errorf("%s: endpointslices of %s/%s: %w", cluster, ns, svcName, err)
	}
	for _, sl := range sls.Items {
		var target int32
		for _, p := range sl.Ports {
			if p.Port != nil && (p.Name != nil && *p.Name == portName || portName == "") {
				target = *p.Port
			}
		}
		for _, ep := range sl.Endpoints {
			if target == 0 || len(ep.Addresses) == 0 || ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if lb, ok := lab.Loopback(net.ParseIP(ep.Addresses[0])); ok {
				return net.JoinHostPort(lb.String(), strconv.Itoa(int(target))), nil
			}
		}
	}
	return "", fmt.Errorf("%s: service %s/%s has no ready endpoint for port %s", cluster, ns, svcName, port)
}

// caRoots is the root istiod publishes in the pod's namespace, which the
// injector mounts for istio-agent to trust istiod with.
func caRoots(ctx context.Context, cluster string, kc kubernetes.Interface, ns string) (*x509.CertPool, error) {
	cm, err := kc.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: configmap %s/istio-ca-root-cert: %w", cluster, ns, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
		return nil, fmt.Errorf("%s: configmap %s/istio-ca-root-cert: root-cert.pem holds no certificate", cluster, ns)
	}
	return pool, nil
}
