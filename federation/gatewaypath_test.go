package federation

import (
	"strings"
	"testing"

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
