package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// privateNet is a cluster's network as its istiods see it in a lab with
// Options.PrivateAPIServers: a network namespace the lab makes for the
// cluster, with only its loopback up, in which the cluster's istiods run.
// From inside, the lab forwards (TCP, untouched) to the host's loopback:
//
//	the cluster's own API server  127.0.0.1:<its port>, as in-cluster
//	every load-balancer address   of every lab cluster's LoadBalancer
//	                              Services (east-west gateways), on their
//	                              ports: a loopback one as is, a lab one
//	                              (Options.LabLoadBalancers) added to the
//	                              namespace's lo and forwarded to its
//	                              loopback stand-in (Dialable)
//
// and nothing else: another cluster's API server is not reachable from
// there (connection refused), as a private API server is not from another
// cluster's network. Into it, the lab forwards the istiod pod's address
// (its loopback stand-in) on the ports istiod listens on, so that the
// emulator's proxies, the API server (webhooks, pod proxy) and tests reach
// istiod as before. The hub, the emulator and the lab's other components
// stay on the host and reach every API server: the hub's admin path.
type privateNet struct {
	c     *Cluster
	name  string
	path  string
	peers []*Cluster
	log   io.Writer

	mu    sync.Mutex
	lns   map[string]net.Listener // "out <addr>" inside, "in <addr>" on the host
	addrs map[string]bool         // lab addresses put on the namespace's lo
}

func newPrivateNet(ctx context.Context, c *Cluster, peers []*Cluster, logw io.Writer) (*privateNet, error) {
	n := &privateNet{c: c, name: fmt.Sprintf("flotilla-lab-%d-%s", c.octet, c.Name), peers: peers, log: logw, lns: map[string]net.Listener{}, addrs: map[string]bool{}}
	n.path = "/var/run/netns/" + n.name
	_ = exec.Command("ip", "netns", "del", n.name).Run() // a killed lab's
	for _, args := range [][]string{{"netns", "add", n.name}, {"-n", n.name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cluster %s: ip %s: %v: %s", c.Name, strings.Join(args, " "), err, out)
		}
	}
	u, err := url.Parse(c.Server)
	if err != nil {
		return nil, err
	}
	if err := n.outward(u.Host, u.Host); err != nil {
		n.close()
		return nil, fmt.Errorf("cluster %s: private network: %w", c.Name, err)
	}
	go n.followGateways(ctx)
	go func() { <-ctx.Done(); n.close() }()
	return n, nil
}

// command is argv run in the namespace.
func (n *privateNet) command(argv []string) []string {
	return append([]string{"ip", "netns", "exec", n.name}, argv...)
}

// listenPorts are the ports istiod's args bind on addr.
func listenPorts(args []string, addr string) []string {
	var out []string
	for _, a := range args {
		_, val, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(a, "--") {
			continue
		}
		if h, p, err := net.SplitHostPort(val); err == nil && h == addr {
			out = append(out, p)
		}
	}
	return out
}

// inward forwards addr's ports from the host into the namespace.
func (n *privateNet) inward(addr string, ports []string) error {
	for _, p := range ports {
		a := net.JoinHostPort(addr, p)
		n.mu.Lock()
		have := n.lns["in "+a] != nil
		n.mu.Unlock()
		if have {
			continue
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		n.mu.Lock()
		n.lns["in "+a] = ln
		n.mu.Unlock()
		go acceptEach(ln, func(c net.Conn) { n.forwardInto(c, a) })
	}
	return nil
}

// outward forwards addr from inside the namespace to target on the host.
func (n *privateNet) outward(addr, target string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lns["out "+addr] != nil {
		return nil
	}
	var ln net.Listener
	err := inNetns(n.path, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	n.lns["out "+addr] = ln
	go acceptEach(ln, func(c net.Conn) { forwardTCP(c, target) })
	return nil
}

// onLo puts a lab address (not loopback) on the namespace's lo, so that
// istiod's connections to it stay inside, where outward listens.
func (n *privateNet) onLo(ip net.IP) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := "addr " + ip.String()
	if n.addrs[key] {
		return nil
	}
	if out, err := exec.Command("ip", "-n", n.name, "addr", "add", ip.String()+"/32", "dev", "lo").CombinedOutput(); err != nil && !strings.Contains(string(out), "File exists") {
		return fmt.Errorf("ip addr add %s: %v: %s", ip, err, out)
	}
	n.addrs[key] = true
	return nil
}

// followGateways keeps every lab cluster's load-balancer addresses
// reachable from inside, as they are allocated.
func (n *privateNet) followGateways(ctx context.Context) {
	said := map[string]bool{}
	for ctx.Err() == nil {
		for _, p := range n.peers {
			svcs, err := p.Client().CoreV1().Services("").List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for _, s := range svcs.Items {
				if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
					continue
				}
				for _, in := range s.Status.LoadBalancer.Ingress {
					ip := net.ParseIP(in.IP)
					stand, ok := Dialable(ip)
					if !ok {
						continue
					}
					if !ip.IsLoopback() {
						if err := n.onLo(ip); err != nil {
							if !said[in.IP] {
								said[in.IP] = true
								fmt.Fprintf(n.log, "lab: %s: private network: %v\n", n.c.Name, err)
							}
							continue
						}
					}
					for _, sp := range s.Spec.Ports {
						a := net.JoinHostPort(in.IP, strconv.Itoa(int(sp.Port)))
						target := net.JoinHostPort(stand.String(), strconv.Itoa(int(sp.Port)))
						if err := n.outward(a, target); err != nil && !said[a] {
							said[a] = true
							fmt.Fprintf(n.log, "lab: %s: private network: %s: %v\n", n.c.Name, a, err)
						}
					}
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (n *privateNet) forwardInto(c net.Conn, addr string) {
	defer c.Close()
	var up net.Conn
	err := inNetns(n.path, func() error {
		var err error
		up, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

func (n *privateNet) close() {
	n.mu.Lock()
	for k, ln := range n.lns {
		ln.Close()
		delete(n.lns, k)
	}
	n.mu.Unlock()
	_ = exec.Command("ip", "netns", "del", n.name).Run()
}

func acceptEach(ln net.Listener, h func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go h(c)
	}
}

// inNetns runs fn on a thread in the network namespace at path: sockets fn
// creates belong to that namespace for their lifetime.
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := os.Open(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Left locked: the thread stays in the namespace and exits with
		// this goroutine rather than serve others.
		return fmt.Errorf("leave %s: %w", path, err)
	}
	runtime.UnlockOSThread()
	return ferr
}
