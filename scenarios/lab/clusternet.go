package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// clusterNet is the cluster network as the API server reaches into it, for
// labs that run real Istio: the API server's egress selector sends its
// "cluster" traffic (pod and service proxy, admission webhooks, exec and
// logs at the kubelet) as HTTP CONNECT requests to a Unix socket here, and
// clusterNet connects each as the cluster's network would, to loopback only:
//
//	127.0.0.0/8          as is (kwok's kubelet server)
//	lab address 10.L.b.c its loopback stand-in (Loopback), same port: pods,
//	                     nodes, load-balancer addresses
//	service address      a ready endpoint of the Service, at the target port,
//	                     as kube-proxy would (serviceCIDR)
//
// Anything else is refused. This is how the API server calls istiod's
// webhooks through their Service and reaches istiod's debug endpoints
// through the pod proxy, as istioctl does.
type clusterNet struct {
	c    *Cluster
	sock string
	ln   net.Listener
	wg   sync.WaitGroup
}

// egressConfig is the API server's --egress-selector-config-file content.
func (n *clusterNet) egressConfig() ([]byte, error) {
	return yaml.Marshal(map[string]any{
		"apiVersion": "apiserver.k8s.io/v1beta1",
		"kind":       "EgressSelectorConfiguration",
		"egressSelections": []any{map[string]any{
			"name": "cluster",
			"connection": map[string]any{
				"proxyProtocol": "HTTPConnect",
				"transport":     map[string]any{"uds": map[string]any{"udsName": n.sock}},
			},
		}},
	})
}

// startClusterNet listens on dir/net.sock and writes the egress selector
// configuration for the API server; it returns the configuration's path.
func (c *Cluster) startClusterNet(dir string) (string, error) {
	n := &clusterNet{c: c, sock: filepath.Join(dir, "net.sock")}
	_ = os.Remove(n.sock)
	ln, err := net.Listen("unix", n.sock)
	if err != nil {
		return "", fmt.Errorf("cluster network socket: %w", err)
	}
	n.ln = ln
	cfg, err := n.egressConfig()
	if err != nil {
		ln.Close()
		return "", err
	}
	path := filepath.Join(dir, "egress-selector.yaml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		ln.Close()
		return "", err
	}
	c.net = n
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.serve()
	}()
	return path, nil
}

func (n *clusterNet) close() {
	n.ln.Close()
	n.wg.Wait()
}

func (n *clusterNet) serve() {
	for {
		conn, err := n.ln.Accept()
		if err != nil {
			return
		}
		go n.handle(conn)
	}
}

// handle answers one CONNECT request and then relays bytes both ways.
func (n *clusterNet) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		fmt.Fprintf(conn, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	target, err := n.resolve(ctx, req.Host)
	cancel()
	if err != nil {
		badGateway(conn, fmt.Errorf("%s: %s: %w", n.c.Name, req.Host, err))
		return
	}
	up, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		badGateway(conn, fmt.Errorf("%s: %s via %s: %w", n.c.Name, req.Host, target, err))
		return
	}
	defer up.Close()
	if _, err := fmt.Fprintf(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		// The client speaks first (TLS), so br holds nothing unread but may.
		_, _ = io.Copy(up, br)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, up)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

// badGateway refuses a CONNECT with the reason in the status line: the API
// server quotes the status line in its error ("proxy error from ... while
// dialing ..., code 502: ..."), so a webhook call or pod proxy request that
// cannot be connected names the Service or pod that is not there.
func badGateway(conn net.Conn, err error) {
	reason := strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, err.Error())
	fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway (%s)\r\nContent-Length: 0\r\n\r\n", reason)
}

// resolve maps a destination host:port as the cluster network would.
func (n *clusterNet) resolve(ctx context.Context, hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", fmt.Errorf("%s: not an address", host)
	}
	if ip.IsLoopback() {
		return hostport, nil
	}
	if lb, ok := Loopback(ip); ok {
		return net.JoinHostPort(lb.String(), port), nil
	}
	_, svcNet, _ := net.ParseCIDR(serviceCIDR)
	if svcNet.Contains(ip) {
		p, err := strconv.Atoi(port)
		if err != nil {
			return "", err
		}
		return n.service(ctx, host, int32(p))
	}
	return "", fmt.Errorf("%s: not in the cluster network", host)
}

// service picks a ready endpoint of the Service with clusterIP ip, at the
// target port of its port p.
func (n *clusterNet) service(ctx context.Context, ip string, p int32) (string, error) {
	cs := n.c.Client()
	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	for _, s := range svcs.Items {
		if s.Spec.ClusterIP != ip {
			continue
		}
		var sp *corev1.ServicePort
		for i := range s.Spec.Ports {
			if s.Spec.Ports[i].Port == p {
				sp = &s.Spec.Ports[i]
			}
		}
		if sp == nil {
			return "", fmt.Errorf("service %s/%s has no port %d", s.Namespace, s.Name, p)
		}
		slices, err := cs.DiscoveryV1().EndpointSlices(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + s.Name})
		if err != nil {
			return "", err
		}
		for _, es := range slices.Items {
			port := endpointPort(es.Ports, sp)
			if port == 0 {
				continue
			}
			for _, ep := range es.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					if lb, ok := Loopback(net.ParseIP(a)); ok {
						return net.JoinHostPort(lb.String(), strconv.Itoa(int(port))), nil
					}
				}
			}
		}
		return "", fmt.Errorf("service %s/%s has no ready endpoint", s.Namespace, s.Name)
	}
	return "", errors.New(ip + ": no such service")
}

// endpointPort is the slice's port for service port sp: by name, else the
// numeric target port.
func endpointPort(ports []discoveryv1.EndpointPort, sp *corev1.ServicePort) int32 {
	for _, ep := range ports {
		if ep.Port != nil && ep.Name != nil && *ep.Name == sp.Name {
			return *ep.Port
		}
	}
	if sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal != 0 {
		return sp.TargetPort.IntVal
	}
	return 0
}
