package federation

import (
	"context"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// TestGatewayEndpoint: a cluster read through its gateway is named by the
// gateway's host and API server port, with the API server's name as
// tls-server-name and the API server's CA; a gateway without an address, or
// a loopback one outside a lab, is refused naming the cluster.
func TestGatewayEndpoint(t *testing.T) {
	cfg := &rest.Config{Host: "https://10.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("ca"), ServerName: "ignored"}}
	tests := []struct {
		name     string
		gw       GatewayPath
		loopback bool
		want     Endpoint
		path     string
		err      string
	}{
		{"load-balancer address", GatewayPath{Host: "203.0.113.7", Port: 6443}, false,
			Endpoint{Server: "https://203.0.113.7:6443", TLSServerName: "kubernetes.default.svc", CAData: []byte("ca"), Gateway: "203.0.113.7:6443"},
			"via gateway 203.0.113.7:6443", ""},
		{"node port of a DNS name", GatewayPath{Host: "gw.west.example.com", Port: 31643}, false,
			Endpoint{Server: "https://gw.west.example.com:31643", TLSServerName: "kubernetes.default.svc", CAData: []byte("ca"), Gateway: "gw.west.example.com:31643"},
			"via gateway gw.west.example.com:31643", ""},
		{"loopback in a lab", GatewayPath{Host: "127.10.2.10", Port: 6443}, true,
			Endpoint{Server: "https://127.10.2.10:6443", TLSServerName: "kubernetes.default.svc", CAData: []byte("ca"), Gateway: "127.10.2.10:6443"},
			"via gateway 127.10.2.10:6443", ""},
		{"no address yet", GatewayPath{}, false, Endpoint{}, "", "west: apiServerAccess gateway: its east-west gateway has no address or no tls-kube-api port yet"},
		{"loopback outside a lab", GatewayPath{Host: "127.0.0.1", Port: 6443}, false, Endpoint{}, "", "west: east-west gateway address https://127.0.0.1:6443 is loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, err := GatewayEndpoint("west", tt.gw, cfg, tt.loopback)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep.Server != tt.want.Server || ep.TLSServerName != tt.want.TLSServerName || string(ep.CAData) != string(tt.want.CAData) || ep.Gateway != tt.want.Gateway {
				t.Errorf("endpoint %+v, want %+v", ep, tt.want)
			}
			if ep.Path() != tt.path {
				t.Errorf("path %q, want %q", ep.Path(), tt.path)
			}
		})
	}
	if p := (Endpoint{Server: "https://10.0.0.1:6443"}).Path(); p != "direct https://10.0.0.1:6443" {
		t.Errorf("direct path %q", p)
	}
}

// TestProbePathWaitsForGateway: a gateway path that starts answering a
// moment after the first probe is taken once it does; one that never
// answers fails after GatewayWait naming the gateway; a direct path is
// probed once.
func TestProbePathWaitsForGateway(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the gateway's port: nothing listens yet
	srv.StartTLS()
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	// httptest's certificate names example.com: the name the probe sends.
	late := func(d time.Duration) {
		time.Sleep(d)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					up, err := net.Dial("tcp", srv.Listener.Addr().String())
					if err != nil {
						c.Close()
						return
					}
					go func() { _, _ = io.Copy(up, c); up.Close() }()
					_, _ = io.Copy(c, up)
					c.Close()
				}()
			}
		}()
		t.Cleanup(func() { l.Close() })
	}
	ep := Endpoint{Server: "https://" + addr, CAData: ca, TLSServerName: "example.com", Gateway: addr}
	ctx := context.Background()

	go late(1500 * time.Millisecond)
	start := time.Now()
	if err := probePath(ctx, "west", ep, Options{GatewayWait: 10 * time.Second}); err != nil {
		t.Fatalf("gateway path answering after 1.5s: %v", err)
	}
	t.Logf("taken after %s", time.Since(start).Round(100*time.Millisecond))

	dead := ep
	dead.Server, dead.Gateway = "https://127.0.0.1:1", "127.0.0.1:1"
	err = probePath(ctx, "west", dead, Options{GatewayWait: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "through its east-west gateway 127.0.0.1:1, for 2s") {
		t.Errorf("dead gateway path: %v", err)
	}
	direct := dead
	direct.Gateway = ""
	start = time.Now()
	if err := probePath(ctx, "west", direct, Options{GatewayWait: 10 * time.Second}); err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("dead direct path: %v after %s, want a failure at once", err, time.Since(start))
	}
}
