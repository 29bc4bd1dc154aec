package emulator

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	"golang.org/x/net/http2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/flotillamesh/flotilla/scenarios/emulator/workloadapi"
)

// Ambient multi-network: istiod gives each ztunnel, for a
// global service, one coalesced workload per other network, with no
// address and that network's gateway (the status address of its
// istio-east-west Gateway) with its HBONE port. ztunnel reaches it by
// double HBONE (ztunnel src/proxy/outbound.rs proxy_to_double_hbone): an
// outer HBONE to the gateway, mTLS checked against the gateway workload's
// identity, whose CONNECT names the service (hostname:port); inside that
// stream an inner mTLS session with the source's certificate, checked
// against the service's SANs, and an inner CONNECT naming the service
// again, with x-istio-origin-network. The gateway ends the outer tunnel and
// passes the inner one, unread, to the HBONE port of a local workload of
// the service; that workload's ztunnel ends it.

// originNetworkHeader carries the source's network on the inner CONNECT.
const originNetworkHeader = "x-istio-origin-network"

// eastWestClass is the GatewayClass of ambient east-west gateways.
const eastWestClass = "istio-east-west"

// gatewayManagedLabel marks the pods of a Gateway API gateway istiod's
// deployment controller rendered, istio-proxy container and all, without
// the injector.
const gatewayManagedLabel = "gateway.istio.io/managed"

var gatewayAPIGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}

// eastWestGateway is an ambient east-west gateway: a Gateway API Gateway
// of class istio-east-west whose status has an address (istiod writes it
// from the Service its deployment controller made).
type eastWestGateway struct {
	namespace, name string
	address         string
	network         string
	hbonePort       int64
}

// readEastWestGateways lists a cluster's ambient east-west gateways; none
// when the Gateway API is not installed.
func readEastWestGateways(ctx context.Context, cluster string, dyn dynamic.Interface) ([]eastWestGateway, error) {
	list, err := dyn.Resource(gatewayAPIGVR).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: list Gateway API gateways: %w", cluster, err)
	}
	var out []eastWestGateway
	for _, u := range list.Items {
		if class, _, _ := unstructured.NestedString(u.Object, "spec", "gatewayClassName"); class != eastWestClass {
			continue
		}
		g := eastWestGateway{namespace: u.GetNamespace(), name: u.GetName(), network: u.GetLabels()[networkLabel]}
		listeners, _, _ := unstructured.NestedSlice(u.Object, "spec", "listeners")
		for _, l := range listeners {
			m, _ := l.(map[string]any)
			if m["protocol"] == "HBONE" {
				g.hbonePort, _ = m["port"].(int64)
			}
		}
		addrs, _, _ := unstructured.NestedSlice(u.Object, "status", "addresses")
		for _, a := range addrs {
			if m, ok := a.(map[string]any); ok && g.address == "" {
				g.address, _ = m["value"].(string)
			}
		}
		if g.address != "" && g.hbonePort != 0 {
			out = append(out, g)
		}
	}
	return out, nil
}

// eastWestAgent is the ready agent of a pod of the gateway's Deployment
// (label gateway.networking.k8s.io/gateway-name), nil when none.
func (e *Emulator) eastWestAgent(cluster string, g eastWestGateway) *agent {
	e.mu.Lock()
	var cands []*agent
	for _, a := range e.agents {
		if a.cluster == cluster && a.pod.Namespace == g.namespace && a.pod.Labels["gateway.networking.k8s.io/gateway-name"] == g.name {
			cands = append(cands, a)
		}
	}
	e.mu.Unlock()
	for _, a := range cands {
		if a.ready() {
			return a
		}
	}
	return nil
}

// eastWestListeners opens each east-west gateway's HBONE port at its
// address once a pod of it has a ready agent (istiod configured its Envoy).
func (e *Emulator) eastWestListeners(cluster string, v *clusterView, want map[string]func(net.Conn), kinds map[string]string) {
	for _, g := range v.eastWest {
		ip := net.ParseIP(g.address)
		if ip == nil || !ip.IsLoopback() || e.eastWestAgent(cluster, g) == nil {
			continue
		}
		addr := net.JoinHostPort(g.address, strconv.FormatInt(g.hbonePort, 10))
		want[addr], kinds[addr] = e.eastWestHandler(cluster, g), "east-west gateway "+cluster+"/"+g.namespace+"/"+g.name
	}
}

// eastWestHandler is the gateway's HBONE listener: mTLS with the identity
// istiod's CA gave the gateway pod (any peer of the trust domain chaining
// to istiod's root), then each CONNECT naming a service (hostname:port) is
// joined, as bytes, to the HBONE port of a local workload of that service
// in istiod's view.
func (e *Emulator) eastWestHandler(cluster string, g eastWestGateway) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		a := e.eastWestAgent(cluster, g)
		if a == nil {
			return
		}
		cert, roots, td, err := a.identity()
		if err != nil {
			e.logf("east-west gateway %s/%s/%s: %v", cluster, g.namespace, g.name, err)
			return
		}
		tc := tls.Server(c, &tls.Config{
			Certificates:          []tls.Certificate{*cert},
			NextProtos:            []string{"h2"},
			ClientAuth:            tls.RequireAnyClientCert,
			VerifyPeerCertificate: verifyPeer(roots, td, nil),
			MinVersion:            tls.VersionTLS13,
		})
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			e.logf("east-west gateway %s/%s/%s: TLS: %v", cluster, g.namespace, g.name, err)
			return
		}
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				http.Error(rw, "HBONE takes CONNECT only", http.StatusMethodNotAllowed)
				return
			}
			host, port, err := net.SplitHostPort(r.Host)
			p, _ := strconv.Atoi(port)
			if err != nil || net.ParseIP(host) != nil {
				http.Error(rw, r.Host+": the east-west gateway takes a service hostname", http.StatusBadRequest)
				return
			}
			z := e.anyZtunnel(cluster)
			if z == nil {
				http.Error(rw, "no workload view", http.StatusServiceUnavailable)
				return
			}
			_, backends := z.service(host, uint32(p))
			var local []backend
			for _, b := range backends {
				if b.gateway == nil && b.w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE {
					local = append(local, b)
				}
			}
			if len(local) == 0 {
				e.logf("east-west gateway %s/%s/%s: CONNECT %s: no local workload", cluster, g.namespace, g.name, r.Host)
				http.Error(rw, "no healthy upstream", http.StatusServiceUnavailable)
				return
			}
			b := local[e.next(cluster+"/eastwest/"+r.Host, len(local))]
			up, err := dialEndpoint(r.Context(), b.ip, hbonePort)
			if err != nil {
				http.Error(rw, err.Error(), http.StatusServiceUnavailable)
				return
			}
			defer up.Close()
			e.logf("east-west gateway %s/%s/%s: CONNECT %s -> workload %s/%s %s", cluster, g.namespace, g.name, r.Host, b.w.Namespace, b.w.Name, net.JoinHostPort(b.ip, strconv.Itoa(hbonePort)))
			rw.WriteHeader(http.StatusOK)
			rw.(http.Flusher).Flush()
			pipeStream(rw, r.Body, up)
		})})
	}
}

// pipeStream joins an HTTP/2 stream (body in, rw out) to conn both ways
// until conn's side ends.
func pipeStream(rw http.ResponseWriter, body io.Reader, conn net.Conn) {
	go func() {
		_, _ = io.Copy(conn, body)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if _, werr := rw.Write(buf[:n]); werr != nil {
				return
			}
			rw.(http.Flusher).Flush()
		}
		if err != nil {
			return
		}
	}
}

// anyZtunnel is a ready ztunnel of the cluster (every one has the same view).
func (e *Emulator) anyZtunnel(cluster string) *ztunnel {
	e.mu.Lock()
	var cands []*ztunnel
	for _, z := range e.ztunnels {
		if z.cluster == cluster {
			cands = append(cands, z)
		}
	}
	e.mu.Unlock()
	for _, z := range cands {
		if z.ready() {
			return z
		}
	}
	return nil
}

// doubleHBONE carries a call to a workload of another network through its
// network's east-west gateway.
func (z *ztunnel) doubleHBONE(ctx context.Context, client *corev1.Pod, src *workloadapi.Workload, svc *workloadapi.Service, b backend, host string, port int, path string) answer {
	fail := func(format string, args ...any) answer {
		msg := fmt.Sprintf(format, args...)
		z.logf("ztunnel %s: %s/%s -> %s:%d: %s", z.name(), client.Namespace, client.Name, svc.Hostname, port, msg)
		return answer{http.StatusBadGateway, "curl: (56) Recv failure: Connection reset by peer (" + msg + ")\n"}
	}
	gw, gwIP := z.gatewayWorkload(b.gateway)
	if gw == nil {
		return fail("network gateway %s of network %q is not in istiod's workload view", gwIP, b.w.Network)
	}
	cert, roots, err := z.certFor(ctx, src)
	if err != nil {
		return fail("%v", err)
	}
	gwID := z.identity(gw)
	conn, err := dialEndpoint(ctx, gwIP, int32(b.gateway.HboneMtlsPort))
	if err != nil {
		return fail("network gateway %s:%d: %v", gwIP, b.gateway.HboneMtlsPort, err)
	}
	defer conn.Close()
	outer := tls.Client(conn, &tls.Config{
		Certificates:          []tls.Certificate{*cert},
		NextProtos:            []string{"h2"},
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyPeer(roots, gwID.TrustDomain, map[string]bool{gwID.String(): true}),
		MinVersion:            tls.VersionTLS13,
	})
	if err := outer.HandshakeContext(ctx); err != nil {
		return fail("network gateway TLS: %v", err)
	}
	authority := net.JoinHostPort(svc.Hostname, strconv.Itoa(port))
	tunnel, err := connect(ctx, outer, authority, nil)
	if err != nil {
		return fail("network gateway CONNECT %s: %v", authority, err)
	}
	defer tunnel.Close()
	// The inner session ends at the remote workload's ztunnel: its peer
	// must be one of the service's SANs (any identity of the trust domain
	// when istiod names none).
	var sans map[string]bool
	if len(svc.SubjectAltNames) > 0 {
		sans = map[string]bool{}
		for _, s := range svc.SubjectAltNames {
			sans[s] = true
		}
	}
	td := z.identity(b.w).TrustDomain
	inner := tls.Client(tunnel, &tls.Config{
		Certificates:          []tls.Certificate{*cert},
		NextProtos:            []string{"h2"},
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyPeer(roots, td, sans),
		MinVersion:            tls.VersionTLS13,
	})
	if err := inner.HandshakeContext(ctx); err != nil {
		return fail("inner HBONE TLS through the network gateway: %v", err)
	}
	stream, err := connect(ctx, inner, authority, http.Header{originNetworkHeader: {z.env["NETWORK"]}})
	if err != nil {
		return fail("inner HBONE CONNECT %s: %v", authority, err)
	}
	defer stream.Close()
	z.logf("ztunnel %s: %s/%s (%s) -> %s: network %q via double HBONE, network gateway %s:%d (%s), CONNECT %s", z.name(), client.Namespace, client.Name, z.identity(src), svc.Hostname, b.w.Network, gwIP, b.gateway.HboneMtlsPort, gwID, authority)
	return roundTrip(stream, host, port, path)
}
