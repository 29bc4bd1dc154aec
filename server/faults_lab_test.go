package server

import (
	"context"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// faultProxy stands between the hub and one API server (TLS passes
// through): kill makes the API server vanish mid-flight, every connection
// cut and new ones refused; revive brings it back on the same address;
// delay makes it answer slowly.
type faultProxy struct {
	target, addr string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	delay time.Duration
}

func startFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{target: target, addr: net.JoinHostPort(host, "0"), conns: map[net.Conn]bool{}}
	p.revive(t)
	t.Cleanup(p.kill)
	return p
}

func (p *faultProxy) revive(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
}

func (p *faultProxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

func (p *faultProxy) setDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

func (p *faultProxy) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // killed while dialling
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[client], p.conns[server] = true, true
	p.mu.Unlock()
	go func() { io.Copy(server, client); server.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d := p.delay
			p.mu.Unlock()
			time.Sleep(d)
			if _, werr := client.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	client.Close()
}

// faultyHub is an isolated hub whose east connection goes through a proxy,
// with request timeout as the hub's RequestTimeout.
func faultyHub(ctx context.Context, t *testing.T, prefix string, timeout time.Duration) (*Hub, *spec.Mesh, string, *faultProxy) {
	l := testLab.Get(t)
	h, m, ns := isolatedHub(ctx, t, l, prefix)
	u, err := url.Parse(l.Cluster("east").RESTConfig().Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startFaultProxy(t, u.Host)
	h.RequestTimeout = timeout
	h.Connect = func(c spec.Cluster, _ string) (*kube.Cluster, error) {
		cfg := l.Cluster(c.Name).RESTConfig()
		if c.Name == "east" {
			cfg.Host = "https://" + proxy.addr
		}
		kc, err := kube.Connect(c.Name, cfg)
		if err != nil {
			return nil, err
		}
		// The hub's own deadline, read at each apply's connect.
		return h.withRequestTimeout(kc)
	}
	return h, m, ns, proxy
}

// failuresNameOnly: the report failed, and every failed step is east's or
// names east.
func failuresNameOnly(t *testing.T, rep *ApplyReport, cluster string) {
	t.Helper()
	if rep.Err() == nil {
		t.Fatal("the apply reports no failure")
	}
	for _, s := range rep.Failed() {
		if s.Cluster != cluster && !strings.Contains(s.Error, cluster) {
			t.Errorf("failed step %s/%s does not name %s: %s", s.Cluster, s.Step, cluster, s.Error)
		}
	}
}

func assertCACerts(ctx context.Context, t *testing.T, cluster, ns string) {
	t.Helper()
	kc, err := testLab.Get(t).Cluster(cluster).Connect()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := pki.ReadCACerts(ctx, kc, ns)
	if err != nil || cc == nil {
		t.Fatalf("%s: no cacerts in %s: %v", cluster, ns, err)
	}
	if err := cc.CACerts.Validate(time.Now()); err != nil {
		t.Fatalf("%s: cacerts: %v", cluster, err)
	}
}

// TestAPIServerKilledMidApply: east's API server vanishes while an apply
// runs (right after east's cacerts is written). West converges, the failures
// name east, and the next apply, with east back, completes.
func TestAPIServerKilledMidApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, m, ns, proxy := faultyHub(ctx, t, "kill", 10*time.Second)
	var once sync.Once
	killed := false
	h.Hook = func(point string) {
		if strings.HasPrefix(point, "journal: east cacerts") {
			once.Do(func() { proxy.kill(); killed = true })
		}
	}
	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !killed {
		t.Fatal("the apply never reached the kill point")
	}
	failuresNameOnly(t, rep, "east")
	assertCACerts(ctx, t, "west", ns)
	t.Logf("with east gone: %d failed steps, first: %s", len(rep.Failed()), rep.Err())

	h.Hook = nil
	proxy.revive(t)
	rep, err = h.Apply(ctx, m, ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("the apply after east came back: %v %v", err, rep.Err())
	}
	assertCACerts(ctx, t, "east", ns)
	for _, pair := range [][2]string{{"east", "west"}, {"west", "east"}} {
		kc, _ := testLab.Get(t).Cluster(pair[0]).Connect()
		if _, err := kc.Kube.CoreV1().Secrets(ns).Get(ctx, "istio-remote-secret-"+pair[1], metav1.GetOptions{}); err != nil {
			t.Errorf("%s: remote secret for %s: %v", pair[0], pair[1], err)
		}
	}
}

// TestAPIServerSlow: east's API server answers every read two seconds late;
// the hub's one-second request deadline trips for east, named, while west
// converges; once east answers in time, the next apply completes.
func TestAPIServerSlow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, m, ns, proxy := faultyHub(ctx, t, "slow", time.Second)
	proxy.setDelay(2 * time.Second)
	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	failuresNameOnly(t, rep, "east")
	if e := rep.Err().Error(); !strings.Contains(e, "Client.Timeout") && !strings.Contains(e, "deadline exceeded") {
		t.Errorf("the failure does not say the deadline tripped: %s", e)
	}
	assertCACerts(ctx, t, "west", ns)
	proxy.setDelay(0)
	// Connections opened while east was slow may still carry the delay:
	// the next apply runs with the ordinary deadline.
	h.RequestTimeout = 0
	rep, err = h.Apply(ctx, m, ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("the apply once east is quick again: %v %v", err, rep.Err())
	}
	assertCACerts(ctx, t, "east", ns)
}
