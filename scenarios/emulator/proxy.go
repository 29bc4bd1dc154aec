package emulator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// callTimeout bounds one emulated request end to end, once the world it
// routes by is fresh.
const callTimeout = 10 * time.Second

// freshenBudget bounds the sync a request may wait for first. Under load
// one sync takes seconds; it must not eat the request's own budget (Envoy
// answers from config it already holds). A sync that does not finish in
// time leaves the request to the world as last read.
const freshenBudget = 5 * time.Second

// answer is what the client's side of the data plane returns to the app.
type answer struct {
	status int
	body   string
}

func envoyFailure(reason string, err error) answer {
	return answer{status: http.StatusServiceUnavailable, body: fmt.Sprintf(
		"upstream connect error or disconnect/reset before headers. reset reason: %s, transport failure reason: %v\n", reason, err)}
}

// podRef names a pod across syncs.
type podRef struct{ namespace, name, uid string }

// captureHandler takes one proxied HTTP request of a process exec'd in a
// pod of cluster, and makes it as that pod's sidecar (or, without one,
// through kube-proxy). caller is the pod whose own capture address took the
// request; nil is the node's, which kwok uses for pods without an Exec yet.
func (e *Emulator) captureHandler(cluster string, caller *podRef) func(net.Conn) {
	return func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		e.freshen()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		a := e.call(ctx, cluster, caller, req)
		if a.status != http.StatusOK {
			e.logf("%s: %s %s: %d %s", cluster, req.Method, req.URL, a.status, strings.TrimSpace(a.body))
		}
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			a.status, http.StatusText(a.status), len(a.body), a.body)
	}
}

// callerPod finds the calling pod in cluster v: the one named, or for the
// node's capture address the one running curl pod.
func callerPod(v *clusterView, caller *podRef) (*corev1.Pod, error) {
	if caller != nil {
		for i := range v.pods {
			p := &v.pods[i]
			if p.Namespace == caller.namespace && p.Name == caller.name && string(p.UID) == caller.uid && running(p) {
				return p, nil
			}
		}
		return nil, fmt.Errorf("emulator: exec in cluster %s: pod %s/%s is not running", v.name, caller.namespace, caller.name)
	}
	var clients []*corev1.Pod
	for i := range v.pods {
		if p := &v.pods[i]; running(p) && isCurl(p) {
			clients = append(clients, p)
		}
	}
	if len(clients) != 1 {
		return nil, fmt.Errorf("emulator: exec in cluster %s through the node's capture address: %d running curl pods; a pod without its own kwok Exec (written once it runs) is told apart only when it is the one curl pod", v.name, len(clients))
	}
	return clients[0], nil
}

// call routes a request from a pod of cluster to a service.
func (e *Emulator) call(ctx context.Context, cluster string, caller *podRef, req *http.Request) answer {
	w := e.world.Load()
	v := w.views[cluster]
	m := e.member(cluster)
	if v == nil || m == nil {
		return answer{http.StatusBadGateway, "cluster " + cluster + " is not known to the emulator\n"}
	}
	client, err := callerPod(v, caller)
	if err != nil {
		return answer{http.StatusBadGateway, err.Error() + "\n"}
	}

	host := req.URL.Hostname()
	if host == "" {
		host = req.Host
	}
	port := 80
	if p := req.URL.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	parts := strings.Split(host, ".")
	svcName, ns := parts[0], client.Namespace
	if len(parts) > 1 {
		ns = parts[1]
	}
	// The client's cluster DNS must know the service, mesh or not.
	svc, err := m.kube.CoreV1().Services(ns).Get(ctx, svcName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (6) Could not resolve host: %s\n", host)}
	}
	if err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("%s: read service %s/%s: %v\n", cluster, ns, svcName, err)}
	}
	portName := ""
	for _, p := range svc.Spec.Ports {
		if int(p.Port) == port {
			portName = p.Name
		}
	}
	path := req.URL.RequestURI()

	if sidecarContainer(client) != nil {
		return e.callAsProxy(ctx, cluster, client, host, port, svcName, ns, path)
	}
	if ambientPod(v, client) && redirected(client) {
		return e.callViaZtunnel(ctx, cluster, client, host, port, svcName, ns, path)
	}
	// Without a sidecar, kube-proxy.
	eps, err := listEndpoints(ctx, cluster, m.kube, ns, svcName, portName)
	if err != nil {
		return answer{http.StatusBadGateway, err.Error() + "\n"}
	}
	if len(eps) == 0 {
		return answer{http.StatusBadGateway, "curl: (7) Failed to connect: no endpoints\n"}
	}
	ep := eps[e.next(cluster+"/kube-proxy/"+ns+"/"+svcName, len(eps))]
	conn, err := dialEndpoint(ctx, ep.ip, ep.port)
	if err != nil {
		return answer{http.StatusBadGateway, fmt.Sprintf("curl: (7) Failed to connect: %v\n", err)}
	}
	defer conn.Close()
	return roundTrip(conn, host, port, path)
}

// callAsProxy makes a call as the client pod's Envoy, configured by
// istiod: the outbound cluster's endpoints as istiod sent them
// (in another network, the east-west gateway at 15443 that istiod put in
// their place), over the transport socket the cluster's matches pick for
// the endpoint (Istio mTLS for tlsMode istio, with istiod's SNI and SANs),
// with the certificate istiod's CA issued.
func (e *Emulator) callAsProxy(ctx context.Context, cluster string, client *corev1.Pod, host string, port int, svcName, ns, path string) answer {
	a := e.agentFor(cluster, client)
	if a == nil {
		return answer{http.StatusServiceUnavailable, "no healthy upstream: the sidecar has no configuration yet\n"}
	}
	cert, roots, trustDomain, err := a.identity()
	if err != nil {
		return envoyFailure("connection failure", err)
	}
	fqdn := fmt.Sprintf("%s.%s.svc.cluster.local", svcName, ns)
	name := fmt.Sprintf("outbound|%d||%s", port, fqdn)
	c, eps := a.endpoints(name)
	if c == nil {
		return answer{http.StatusServiceUnavailable, fmt.Sprintf("no healthy upstream: istiod sent no cluster %s\n", name)}
	}
	if len(eps) == 0 {
		return answer{http.StatusServiceUnavailable, "no healthy upstream\n"}
	}
	t := eps[e.next(cluster+"/"+client.Namespace+"/"+client.Name+"/"+name, len(eps))]
	up, err := upstreamTLS(c, t)
	if err != nil {
		return envoyFailure("connection failure", err)
	}
	conn, err := dialEndpoint(ctx, t.ip, t.port)
	if err != nil {
		return envoyFailure("connection failure", err)
	}
	defer conn.Close()
	if up == nil {
		return roundTrip(conn, host, port, path)
	}
	tc := tls.Client(conn, &tls.Config{
		Certificates: []tls.Certificate{*cert},
		ServerName:   up.sni,
		// Istio checks the peer's chain and SPIFFE identity (the SANs
		// istiod named for the service), not a DNS name.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: a.withCRL(verifyPeer(roots, trustDomain, up.sans), roots),
		MinVersion:            tls.VersionTLS12,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return envoyFailure("connection failure", fmt.Errorf("TLS error: %w", err))
	}
	return roundTrip(tc, host, port, path)
}

// next is round-robin over n choices, per key.
func (e *Emulator) next(key string, n int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := e.rr[key] % n
	e.rr[key] = i + 1
	return i
}

// serverHandler is a helloworld pod: its sidecar (mTLS or, PERMISSIVE,
// plaintext) when it has one, then the app.
func (e *Emulator) serverHandler(cluster, ns, name string) func(net.Conn) {
	return func(c net.Conn) {
		w := e.world.Load()
		v := w.views[cluster]
		if v == nil {
			return
		}
		var pod *corev1.Pod
		for i := range v.pods {
			if v.pods[i].Namespace == ns && v.pods[i].Name == name {
				pod = &v.pods[i]
			}
		}
		if pod == nil {
			return
		}
		version, _, _ := helloVersion(pod)
		br := bufio.NewReader(c)
		first, err := br.Peek(1)
		if err != nil {
			return
		}
		var conn net.Conn = &peekedConn{Conn: c, r: br}
		if first[0] == 0x16 { // a TLS handshake record, to the sidecar istiod configured
			a := e.agentFor(cluster, pod)
			if a == nil {
				return // the app speaks no TLS
			}
			cert, roots, trustDomain, err := a.identity()
			if err != nil {
				e.logf("%s: pod %s/%s: %v", cluster, ns, name, err)
				return
			}
			tc := tls.Server(conn, &tls.Config{
				Certificates:          []tls.Certificate{*cert},
				ClientAuth:            tls.RequireAnyClientCert,
				VerifyPeerCertificate: a.withCRL(verifyPeer(roots, trustDomain, nil), roots),
				MinVersion:            tls.VersionTLS12,
			})
			if err := tc.Handshake(); err != nil {
				e.logf("%s: pod %s/%s: inbound TLS: %v", cluster, ns, name, err)
				return
			}
			conn = tc
		}
		req, err := http.ReadRequest(bufio.NewReader(conn))
		if err != nil {
			return
		}
		status, body := http.StatusNotFound, "404 page not found\n"
		if req.URL.Path == "/hello" {
			status, body = http.StatusOK, fmt.Sprintf("Hello version: %s, instance: %s\n", version, name)
		}
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			status, http.StatusText(status), len(body), body)
	}
}

// gatewayHandler is an east-west gateway's 15443 listener: AUTO_PASSTHROUGH
// reads the SNI outbound_.<port>_._.<service host> and passes the TLS
// stream, untouched, to an endpoint istiod sent the gateway's Envoy for the
// cluster the SNI names (AUTO_PASSTHROUGH's SNI-DNAT clusters are named as
// the SNI).
func (e *Emulator) gatewayHandler(cluster, selector string) func(net.Conn) {
	return func(c net.Conn) {
		sni, hello := peekSNI(c)
		if _, _, _, ok := parseSNI(sni); !ok {
			e.logf("%s: gateway: SNI %q is not outbound_.<port>_._.<service>.<namespace>.svc.cluster.local", cluster, sni)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		e.passThroughAsGateway(ctx, c, hello, cluster, selector, sni)
	}
}

// passThroughAsGateway passes a connection whose ClientHello (hello) named
// sni to an endpoint istiod sent the gateway for the cluster of that name.
func (e *Emulator) passThroughAsGateway(ctx context.Context, c net.Conn, hello *bytes.Buffer, cluster, selector, sni string) {
	a := e.gatewayAgent(cluster, selector)
	if a == nil {
		e.logf("%s: gateway %s: no configuration from istiod", cluster, selector)
		return
	}
	cl, eps := a.endpoints(sni)
	if cl == nil {
		e.logf("%s: gateway %s: istiod sent no cluster %s", cluster, selector, sni)
		return
	}
	if len(eps) == 0 {
		e.logf("%s: gateway %s: no endpoint for %s", cluster, selector, sni)
		return
	}
	ep := eps[e.next(cluster+"/gateway/"+sni, len(eps))]
	up, err := dialEndpoint(ctx, ep.ip, ep.port)
	if err != nil {
		e.logf("%s: gateway %s: %v", cluster, selector, err)
		return
	}
	passThrough(c, up, hello.Bytes())
}

// passThrough sends the peeked ClientHello upstream, then copies both ways
// until either side ends, and closes up: a gateway passing TLS through.
func passThrough(c, up net.Conn, hello []byte) {
	defer up.Close()
	if _, err := up.Write(hello); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

func parseSNI(sni string) (port int, svc, ns string, ok bool) {
	parts := strings.SplitN(sni, "_.", 4)
	if len(parts) != 4 || parts[0] != "outbound" {
		return 0, "", "", false
	}
	port, err := strconv.Atoi(strings.TrimSuffix(parts[1], "_"))
	if err != nil {
		// parts[1] is "<port>" when split at "_." leaves it bare
		return 0, "", "", false
	}
	host := strings.Split(parts[3], ".")
	if len(host) < 2 {
		return 0, "", "", false
	}
	return port, host[0], host[1], true
}

// verifyPeer checks a peer's chain against roots and its SPIFFE identity:
// in the trust domain, and one of allowed when that is not empty.
func verifyPeer(roots *x509.CertPool, trustDomain string, allowed map[string]bool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("peer sent no certificate")
		}
		verified, err := verifyChain(raw, roots)
		if err != nil {
			return err
		}
		leaf := verified[0]
		for _, u := range leaf.URIs {
			if u.Scheme == "spiffe" && u.Host == trustDomain && (len(allowed) == 0 || allowed[u.String()]) {
				return nil
			}
		}
		return fmt.Errorf("peer identity %v is not an expected SPIFFE ID of trust domain %s", leaf.URIs, trustDomain)
	}
}

// verifyChain parses a peer's certificates (leaf first) and verifies them
// against roots; it returns the first verified chain, leaf first.
func verifyChain(raw [][]byte, roots *x509.CertPool) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fmt.Errorf("peer certificate: %w", err)
	}
	return chains[0], nil
}

// dialEndpoint dials an endpoint istiod sent: a pod address or a gateway's
// load-balancer address, each at its loopback stand-in.
func dialEndpoint(ctx context.Context, ip string, port int32) (net.Conn, error) {
	return dialTCP(ctx, net.JoinHostPort(ip, strconv.Itoa(int(port))))
}

// dialTCP dials a lab address at its loopback stand-in (lab.Dialable), or
// a loopback address: the lab sends nothing elsewhere.
func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, ok := lab.Dialable(net.ParseIP(host))
	if !ok {
		return nil, fmt.Errorf("%s is outside the lab's addresses: not dialled", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
}

// roundTrip sends one GET and reads the answer.
func roundTrip(conn net.Conn, host string, port int, path string) answer {
	_ = conn.SetDeadline(time.Now().Add(callTimeout))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: curl\r\nConnection: close\r\n\r\n", path, host, port)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return envoyFailure("connection termination", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return envoyFailure("connection termination", err)
	}
	return answer{status: resp.StatusCode, body: string(body)}
}

// peekedConn reads through r (what was already buffered, then the conn).
type peekedConn struct {
	net.Conn
	r       io.Reader
	noWrite bool
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *peekedConn) Write(b []byte) (int, error) {
	if p.noWrite {
		return 0, io.ErrClosedPipe
	}
	return p.Conn.Write(b)
}
