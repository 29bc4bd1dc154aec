package federation

import (
	"bytes"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// FuzzKubeconfig builds remote-secret kubeconfigs from arbitrary cluster
// names, servers, CA data and tokens, and reads each back as istiod would.
// A kubeconfig flotilla writes must say exactly what it was given: one
// cluster, its server, CA and token, nothing injected through a crafted
// value (a token or name that breaks out into other YAML keys).
func FuzzKubeconfig(f *testing.F) {
	f.Add("east", "https://10.0.0.1:6443", []byte("-----BEGIN CERTIFICATE-----\n"), "eyJhbGciOiJSUzI1NiJ9.e30.sig", "")
	f.Add("west", "https://api.west.example:443", []byte{}, "tok", "kubernetes.default.svc")
	f.Add("a\nb", "https://x\n  insecure-skip-tls-verify: true", []byte{0}, "t\nexec: {command: sh}", "")
	f.Add("c: d", "http://[::1]:80", []byte("\xff"), "\"'", "x\r\ny")
	f.Fuzz(func(t *testing.T, cluster, server string, caData []byte, token, serverName string) {
		out, err := Kubeconfig(cluster, Endpoint{Server: server, CAData: caData, TLSServerName: serverName}, token)
		if err != nil {
			return
		}
		cfg, err := clientcmd.Load(out)
		if err != nil {
			t.Fatalf("flotilla wrote a kubeconfig it cannot read back: %v\n%s", err, out)
		}
		if len(cfg.Clusters) != 1 || len(cfg.AuthInfos) != 1 || len(cfg.Contexts) != 1 || cfg.CurrentContext != cluster {
			t.Fatalf("kubeconfig for %q: %d clusters, %d users, %d contexts, current %q", cluster, len(cfg.Clusters), len(cfg.AuthInfos), len(cfg.Contexts), cfg.CurrentContext)
		}
		c, u := cfg.Clusters[cluster], cfg.AuthInfos[cluster]
		if c == nil || u == nil {
			t.Fatalf("kubeconfig does not name its cluster %q", cluster)
		}
		if c.Server != server || !bytes.Equal(c.CertificateAuthorityData, caData) || c.TLSServerName != serverName || c.InsecureSkipTLSVerify {
			t.Fatalf("cluster entry changed on the way: %+v", c)
		}
		if u.Token != token || u.Exec != nil || u.AuthProvider != nil || u.TokenFile != "" || u.ClientKey != "" {
			t.Fatalf("user entry changed on the way: %+v", u)
		}
	})
}
