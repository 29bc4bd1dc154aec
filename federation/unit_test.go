package federation

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		server string
		want   bool
	}{
		{"https://127.0.0.1:6443", true},
		{"https://127.45.3.2", true},
		{"https://[::1]:6443", true},
		{"https://localhost:6443", true},
		{"https://LOCALHOST.", true},
		{"https://api.localhost:443", true},
		{"127.0.0.1:6443", true},
		{"https://10.0.0.1:6443", false},
		{"https://[fd00::1]:6443", false},
		{"https://api.east.example.com", false},
		{"https://localhost.example.com", false},
	}
	for _, tc := range tests {
		t.Run(tc.server, func(t *testing.T) {
			if got := IsLoopback(tc.server); got != tc.want {
				t.Errorf("IsLoopback(%q) = %v, want %v", tc.server, got, tc.want)
			}
		})
	}
}

func TestResolveEndpoint(t *testing.T) {
	cfg := &rest.Config{Host: "https://127.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("ca")}}
	tests := []struct {
		name          string
		override      string
		cfg           *rest.Config
		allowLoopback bool
		want          string
		err           string
	}{
		{name: "override wins over the kubeconfig host", override: "https://api.east.example.com:6443/", cfg: cfg, want: "https://api.east.example.com:6443"},
		{name: "loopback host refused", cfg: cfg, err: "east: API server address https://127.0.0.1:6443 is loopback"},
		{name: "loopback allowed for a lab", cfg: cfg, allowLoopback: true, want: "https://127.0.0.1:6443"},
		{name: "loopback override refused too", override: "localhost:6443", cfg: cfg, err: "is loopback"},
		{name: "bare host gets https", override: "10.1.2.3:6443", cfg: cfg, want: "https://10.1.2.3:6443"},
		{name: "http refused", override: "http://10.1.2.3", cfg: cfg, err: "https only"},
		{name: "no address at all", cfg: &rest.Config{}, err: "east: no API server address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ep, err := ResolveEndpoint("east", tc.override, tc.cfg, tc.allowLoopback)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep.Server != tc.want || string(ep.CAData) != "ca" {
				t.Errorf("endpoint = %s (CA %q), want %s (CA \"ca\")", ep.Server, ep.CAData, tc.want)
			}
		})
	}
}

func TestKubeconfigIsIstioctlShaped(t *testing.T) {
	out, err := Kubeconfig("west", Endpoint{Server: "https://10.0.0.2:6443", CAData: []byte("-----BEGIN CERTIFICATE-----\n")}, "tok")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CurrentContext != "west" || cfg.Contexts["west"].Cluster != "west" || cfg.Contexts["west"].AuthInfo != "west" {
		t.Errorf("context = %q %+v, want everything named west", cfg.CurrentContext, cfg.Contexts["west"])
	}
	if c := cfg.Clusters["west"]; c == nil || c.Server != "https://10.0.0.2:6443" || len(c.CertificateAuthorityData) == 0 {
		t.Errorf("cluster = %+v, want server and CA data", c)
	}
	if a := cfg.AuthInfos["west"]; a == nil || a.Token != "tok" {
		t.Error("user west has not the token")
	}
	if len(cfg.Clusters) != 1 || len(cfg.AuthInfos) != 1 || len(cfg.Contexts) != 1 {
		t.Errorf("kubeconfig has %d clusters, %d users, %d contexts, want one each", len(cfg.Clusters), len(cfg.AuthInfos), len(cfg.Contexts))
	}
}

func TestCredentialNeverPrintsItsToken(t *testing.T) {
	c := Credential{Cluster: "east", Namespace: "istio-system", Account: ReaderServiceAccount, Token: "s3cr3t-token"}
	for _, s := range []string{c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(&c)} {
		if strings.Contains(s, "s3cr3t") {
			t.Errorf("formatted credential shows the token: %s", s)
		}
	}
}

// TestCheckCredentialByTime covers the decisions made before any API call;
// a fake clientset stands in because none of these cases reaches it.
func TestCheckCredentialByTime(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	o := TokenOptions{Lifetime: 100 * time.Hour, Now: func() time.Time { return now }}
	c := &kube.Cluster{Name: "east", Kube: fake.NewClientset()}
	a := Account{Namespace: "istio-system", Name: ReaderServiceAccount}
	tests := []struct {
		name  string
		known *Credential
		opts  TokenOptions
		want  RenewalReason
	}{
		{"nothing stored", nil, o, ReasonMissing},
		{"empty token stored", &Credential{}, o, ReasonMissing},
		{"expired", &Credential{Token: "t", Expiry: now.Add(-time.Second)}, o, ReasonExpired},
		{"expires now", &Credential{Token: "t", Expiry: now}, o, ReasonExpired},
		{"inside the default window (half the lifetime)", &Credential{Token: "t", Expiry: now.Add(49 * time.Hour)}, o, ReasonDue},
		{"inside an explicit window", &Credential{Token: "t", Expiry: now.Add(40 * time.Hour)},
			TokenOptions{Lifetime: 100 * time.Hour, RenewBefore: 50 * time.Hour, Now: o.Now}, ReasonDue},
		{"legacy wanted, bound stored", &Credential{Token: "t", Expiry: now.Add(99 * time.Hour)},
			TokenOptions{Legacy: true, Now: o.Now}, ReasonKind},
		{"rotation asked for this cluster", &Credential{Token: "t", Expiry: now.Add(99 * time.Hour), Binding: "b"},
			TokenOptions{Lifetime: 100 * time.Hour, Rotate: map[string]bool{"east": true}, Now: o.Now}, ReasonRotate},
		{"longer left than the configured lifetime (a lifetime shortened)", &Credential{Token: "t", Expiry: now.Add(8760 * time.Hour), Binding: "b"},
			o, ReasonLifetime},
		{"bound to no secret (minted before bindings)", &Credential{Token: "t", Expiry: now.Add(99 * time.Hour)}, o, ReasonUnbound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckCredential(context.Background(), c, a, tc.known, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("reason = %q, want %q", got, tc.want)
			}
		})
	}
}
