package spec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// writeKubeconfig writes a kubeconfig with one context per name → server.
func writeKubeconfig(t *testing.T, servers map[string]string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	for name, server := range servers {
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: "t"}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckInputs(t *testing.T) {
	kc := writeKubeconfig(t, map[string]string{"east": "https://10.0.0.1:6443", "west": "https://10.0.0.2:6443", "loop": "https://127.0.0.1:6443"})
	other := writeKubeconfig(t, map[string]string{"admin": "https://10.0.0.3:6443"})
	rootPEM := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootPEM, []byte("cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		in   string
		want []string // substrings in order; none means valid
	}{
		{"every context present", mesh(with([]string{"  topology: multi-primary"}, "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2}")...), nil},
		{"context missing names cluster and context", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: kind-west, network: n2}"),
			[]string{`line 9: spec.clusters[1].context: cluster west: context "kind-west" not found in kubeconfig ` + kc}},
		{"a cluster's own kubeconfig", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: admin, kubeconfig: '"+other+"', network: n2}"), nil},
		{"a cluster's own kubeconfig missing", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: admin, kubeconfig: /nonexistent/kc, network: n2}"),
			[]string{"spec.clusters[1].kubeconfig: cluster west: open /nonexistent/kc: no such file or directory"}},
		{"loopback server of a cluster others read", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: loop, network: n2}"),
			[]string{`spec.clusters[1].apiServer: cluster west: other clusters read this one, but context "loop" points at https://127.0.0.1:6443`}},
		{"loopback server overridden by apiServer", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: loop, network: n2, apiServer: 'https://10.9.9.9:6443'}"), nil},
		{"loopback admin path of a cluster read through its gateway", mesh("  topology: multi-primary", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: loop, network: n2, apiServerAccess: gateway}"), nil},
		{"loopback server allowed", mesh("  topology: multi-primary", "  allowLoopbackAPIServers: true", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: loop, network: n2}"), nil},
		{"loopback server of a primary nobody reads", mesh("  topology: primary-remote", "  clusters:",
			"  - {name: east, context: loop, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"), nil},
		{"root files missing", mesh("  topology: multi-primary", "  pki: {root: {certFile: '"+rootPEM+"', keyFile: /nonexistent/root-key.pem}}",
			"  clusters:", "  - {name: east, context: east, network: n1}"),
			[]string{"line 7: spec.pki.root.keyFile: open /nonexistent/root-key.pem: no such file or directory"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mustParse(t, tc.in)
			err := CheckInputs(context.Background(), m, kc)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %T %v, want *spec.Error", err, err)
			}
			at := 0
			for _, w := range tc.want {
				i := strings.Index(err.Error()[at:], w)
				if i < 0 {
					t.Fatalf("error does not contain %q:\n%v", w, err)
				}
				at += i + len(w)
			}
		})
	}
}
