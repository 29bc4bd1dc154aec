package emulator

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	corev1 "k8s.io/api/core/v1"

	"github.com/flotillamesh/flotilla/scenarios/emulator/workloadapi"
)

// HBONE as ztunnel speaks it (ztunnel src/proxy/outbound.rs, inbound.rs):
// mTLS between the two workloads' certificates (both issued by istiod's CA
// to the ztunnels that serve them), ALPN h2, and one HTTP/2 CONNECT stream
// per connection whose :authority is the destination workload's address
// and target port; the inbound ztunnel checks that address is the pod it
// serves and connects to the app there.

// callViaZtunnel makes a call from an ambient pod as its node's ztunnel
// does: the source workload and the destination service
// and its workloads as istiod's WDS gave them, and HBONE to the chosen
// workload's 15008 with the source's certificate. A source or service
// istiod's view lacks is refused, as ztunnel refuses an unknown source.
func (e *Emulator) callViaZtunnel(ctx context.Context, cluster string, client *corev1.Pod, host string, port int, svcName, ns, path string) answer {
	z := e.ztunnelFor(cluster, client.Spec.NodeName)
	if z == nil || !z.ready() {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (56) Recv failure: Connection reset by peer (no ztunnel on node %s has istiod's workload view)\n", client.Spec.NodeName)}
	}
	src := z.workloadByIP(client.Status.PodIP)
	if src == nil {
		z.logf("ztunnel %s: %s/%s -> %s:%d: unknown source %s: not in istiod's workload view", z.name(), client.Namespace, client.Name, host, port, client.Status.PodIP)
		return answer{http.StatusBadGateway, "curl: (56) Recv failure: Connection reset by peer (ztunnel: unknown source)\n"}
	}
	fqdn := fmt.Sprintf("%s.%s.svc.cluster.local", svcName, ns)
	svc, backends := z.service(fqdn, uint32(port))
	if svc == nil {
		z.logf("ztunnel %s: %s/%s -> %s:%d: service %s is not in istiod's workload view", z.name(), client.Namespace, client.Name, host, port, fqdn)
		return answer{http.StatusBadGateway, "curl: (56) Recv failure: Connection reset by peer (ztunnel: unknown service)\n"}
	}
	if len(backends) == 0 {
		z.logf("ztunnel %s: %s/%s -> %s:%d: no healthy workload of %s in istiod's workload view", z.name(), client.Namespace, client.Name, host, port, fqdn)
		return answer{http.StatusServiceUnavailable, "curl: (56) Recv failure: Connection reset by peer (ztunnel: no healthy upstream)\n"}
	}
	b := backends[e.next(cluster+"/ztunnel/"+client.Namespace+"/"+client.Name+"/"+fqdn, len(backends))]
	if b.gateway != nil {
		return z.doubleHBONE(ctx, client, src, svc, b, host, port, path)
	}
	target := net.JoinHostPort(b.ip, strconv.Itoa(int(b.port)))
	if b.w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
		// Not captured by ztunnel at the other end: plaintext, as ztunnel
		// sends to a workload outside the mesh.
		conn, err := dialEndpoint(ctx, b.ip, int32(b.port))
		if err != nil {
			return answer{http.StatusBadGateway, fmt.Sprintf("curl: (7) Failed to connect: %v\n", err)}
		}
		defer conn.Close()
		z.logf("ztunnel %s: %s/%s -> %s: workload %s/%s %s in plaintext (tunnel protocol %s)", z.name(), client.Namespace, client.Name, fqdn, b.w.Namespace, b.w.Name, target, b.w.TunnelProtocol)
		return roundTrip(conn, host, port, path)
	}
	cert, roots, err := z.certFor(ctx, src)
	if err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (56) Recv failure: Connection reset by peer (%v)\n", err)}
	}
	peer := z.identity(b.w)
	conn, err := dialEndpoint(ctx, b.ip, hbonePort)
	if err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (56) Recv failure: Connection reset by peer (HBONE %s: %v)\n", b.ip, err)}
	}
	defer conn.Close()
	tc := tls.Client(conn, &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{"h2"},
		// ztunnel checks the peer's chain and that it is the destination
		// workload's identity, not a DNS name.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyPeer(roots, peer.TrustDomain, map[string]bool{peer.String(): true}),
		MinVersion:            tls.VersionTLS13,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (56) Recv failure: Connection reset by peer (HBONE TLS: %v)\n", err)}
	}
	stream, err := connect(ctx, tc, target, nil)
	if err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (56) Recv failure: Connection reset by peer (HBONE CONNECT %s: %v)\n", target, err)}
	}
	defer stream.Close()
	z.logf("ztunnel %s: %s/%s (%s) -> %s: workload %s/%s via HBONE %s, CONNECT %s, peer %s", z.name(), client.Namespace, client.Name, z.identity(src), fqdn, b.w.Namespace, b.w.Name, net.JoinHostPort(b.ip, strconv.Itoa(hbonePort)), target, peer)
	return roundTrip(stream, host, port, path)
}

// connect opens one HTTP/2 CONNECT stream to target over conn, with the
// given request headers.
func connect(ctx context.Context, tc net.Conn, target string, hdr http.Header) (net.Conn, error) {
	if hdr == nil {
		hdr = http.Header{}
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	req := (&http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: target},
		Host:   target,
		Header: hdr,
		Body:   pr,
	}).WithContext(ctx)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		pw.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		pw.Close()
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return &streamConn{r: resp.Body, w: pw, local: tc.LocalAddr(), remote: tc.RemoteAddr(), close: func() { cc.Close() }}, nil
}

// streamConn is one HTTP/2 stream as a net.Conn: reads from r, writes to w.
// Deadlines are left to the context and the connection underneath.
type streamConn struct {
	r             io.ReadCloser
	w             io.WriteCloser
	local, remote net.Addr
	close         func()
	once          sync.Once
}

func (s *streamConn) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s *streamConn) Write(b []byte) (int, error) { return s.w.Write(b) }
func (s *streamConn) Close() error {
	s.once.Do(func() {
		s.w.Close()
		s.r.Close()
		if s.close != nil {
			s.close()
		}
	})
	return nil
}
func (s *streamConn) LocalAddr() net.Addr                { return s.local }
func (s *streamConn) RemoteAddr() net.Addr               { return s.remote }
func (s *streamConn) SetDeadline(t time.Time) error      { return nil }
func (s *streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (s *streamConn) SetWriteDeadline(t time.Time) error { return nil }

// hboneInbound is ztunnel's 15008 at an ambient pod's address: mTLS with
// the pod's certificate (from istiod's CA by impersonation), any peer of
// the trust domain chaining to istiod's root, then HTTP/2 CONNECT streams
// to the pod's own address, each joined to the app's port there.
func (e *Emulator) hboneInbound(cluster string, pod *corev1.Pod) func(net.Conn) {
	ns, name, podIP, node := pod.Namespace, pod.Name, pod.Status.PodIP, pod.Spec.NodeName
	return func(c net.Conn) {
		defer c.Close()
		z := e.ztunnelFor(cluster, node)
		if z == nil || !z.ready() {
			return
		}
		w := z.workloadByIP(podIP)
		if w == nil {
			z.logf("ztunnel %s: HBONE to %s/%s (%s): not in istiod's workload view", z.name(), ns, name, podIP)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		cert, roots, err := z.certFor(ctx, w)
		if err != nil {
			z.logf("ztunnel %s: HBONE to %s/%s: %v", z.name(), ns, name, err)
			return
		}
		id := z.identity(w)
		tc := tls.Server(c, &tls.Config{
			Certificates:          []tls.Certificate{*cert},
			NextProtos:            []string{"h2"},
			ClientAuth:            tls.RequireAnyClientCert,
			VerifyPeerCertificate: verifyPeer(roots, id.TrustDomain, nil),
			MinVersion:            tls.VersionTLS13,
		})
		if err := tc.HandshakeContext(ctx); err != nil {
			z.logf("ztunnel %s: HBONE to %s/%s: TLS: %v", z.name(), ns, name, err)
			return
		}
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				http.Error(rw, "HBONE takes CONNECT only", http.StatusMethodNotAllowed)
				return
			}
			host, port, err := net.SplitHostPort(r.Host)
			p, _ := strconv.Atoi(port)
			if err == nil && net.ParseIP(host) == nil {
				// Double HBONE's inner CONNECT names the service
				// (hostname:service port): this workload's port for it.
				p = int(z.targetPort(w, host, uint32(p)))
				if p == 0 {
					http.Error(rw, fmt.Sprintf("%s: this workload is no endpoint of that service", r.Host), http.StatusBadRequest)
					return
				}
				z.logf("ztunnel %s: HBONE to %s/%s: CONNECT %s from network %q -> port %d", z.name(), ns, name, r.Host, r.Header.Get(originNetworkHeader), p)
			} else if err != nil || host != podIP {
				http.Error(rw, fmt.Sprintf("%s is not this workload's address", r.Host), http.StatusBadRequest)
				return
			}
			app, err := dialEndpoint(r.Context(), podIP, int32(p))
			if err != nil {
				http.Error(rw, err.Error(), http.StatusServiceUnavailable)
				return
			}
			defer app.Close()
			rw.WriteHeader(http.StatusOK)
			rw.(http.Flusher).Flush()
			pipeStream(rw, r.Body, app)
		})})
	}
}
