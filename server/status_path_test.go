package server

import (
	"testing"

	"github.com/flotillamesh/flotilla/federation"
)

// TestSecretPath: status reads a remote secret's server and TLS server name
// and says its path: via the gateway when it sends the API server's
// in-cluster name, else direct; an unreadable kubeconfig has none.
func TestSecretPath(t *testing.T) {
	tests := []struct {
		name string
		ep   federation.Endpoint
		want string
	}{
		{"gateway", federation.Endpoint{Server: "https://192.0.2.20:6443", TLSServerName: "kubernetes.default.svc"}, "via gateway 192.0.2.20:6443"},
		{"direct", federation.Endpoint{Server: "https://10.0.0.2:6443"}, "direct https://10.0.0.2:6443"},
		{"direct with another server name", federation.Endpoint{Server: "https://10.0.0.2:6443", TLSServerName: "api.west.example.com"}, "direct https://10.0.0.2:6443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc, err := federation.Kubeconfig("west", tt.ep, "token")
			if err != nil {
				t.Fatal(err)
			}
			server, name, path := secretPath(kc)
			if server != tt.ep.Server || name != tt.ep.TLSServerName || path != tt.want {
				t.Errorf("got %q %q %q, want %q %q %q", server, name, path, tt.ep.Server, tt.ep.TLSServerName, tt.want)
			}
		})
	}
	if s, n, p := secretPath([]byte("not: [a kubeconfig")); s != "" || n != "" || p != "" {
		t.Errorf("unreadable kubeconfig: %q %q %q", s, n, p)
	}
}
