package csragent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east"}, CertManager: true})

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

const (
	ns       = "istio-system"
	appNS    = "apps-1"
	appSA    = "httpbin"
	agentDNS = csragent.ServiceName + "." + ns + ".svc"
)

// env is one running agent against the lab's east cluster, with cert-manager
// issuing under root.
type env struct {
	kc     *kube.Cluster
	lc     *lab.Cluster
	root   *pki.Root
	trust  *pki.Bundle
	addr   string
	creds  credentials.TransportCredentials
	mAddr  string
	cancel context.CancelFunc
	done   chan error
	// serving is the agent's certificate, for agents a test runs itself.
	serving tls.Certificate
}

var shared *env

// setup applies cert-manager mode to east, waits for the intermediate and
// the agent's serving certificate (csragent.Certificate, issued by
// cert-manager), and runs the agent through Run on loopback. Shared by
// the package's tests and benchmarks.
func setup(t testing.TB) *env {
	t.Helper()
	if shared != nil {
		return shared
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lc := testLab.Get(t).Cluster("east")
	// No client-side rate limit: each call costs the agent three API
	// requests (TokenReview, apply, delete); the lab config's 100 QPS
	// would cap it near 33 calls/s.
	cfg := lc.RESTConfig()
	cfg.QPS, cfg.Burst = -1, 0
	kc, err := kube.Connect("east", cfg)
	if err != nil {
		t.Fatal(err)
	}
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certmanager.Apply(ctx, kc, certmanager.Config{Cluster: "east", Namespace: ns}); err != nil {
		t.Fatal(err)
	}
	// The hub's issuer signs the intermediate; workloads are then signed
	// in the cluster by the intermediate's CA issuer.
	hub := &issuer.Controller{Cluster: kc, Signer: issuer.Signer{Cluster: "east", Namespace: ns, Root: root}}
	go hub.Run(ctx)
	if _, err := certmanager.WaitReady(ctx, kc, ns, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.Apply(ctx, csragent.Certificate(ns)); err != nil {
		t.Fatal(err)
	}
	var serving tls.Certificate
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		s, err := kc.Kube.CoreV1().Secrets(ns).Get(ctx, csragent.TLSSecret, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		serving, err = tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("csr-agent serving certificate: %v", err)
	}
	for _, n := range []string{appNS, "apps-2"} {
		if _, err := kc.Kube.CoreV1().Namespaces().Apply(ctx, corev1ac.Namespace(n), kc.ApplyOptions()); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range []string{appSA, "other"} {
		if _, err := kc.Kube.CoreV1().ServiceAccounts(appNS).Apply(ctx, corev1ac.ServiceAccount(sa, appNS), kc.ApplyOptions()); err != nil {
			t.Fatal(err)
		}
	}
	ports := freePorts(t, 2)
	e := &env{kc: kc, lc: lc, root: root, trust: pki.NewBundle(root.Cert),
		addr: ports[0], mAddr: ports[1], done: make(chan error, 1), serving: serving}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	// The client checks the agent as a proxy would: its Service name, the mesh root.
	e.creds = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: agentDNS})
	rctx, rcancel := context.WithCancel(context.Background())
	e.cancel = rcancel
	go func() {
		e.done <- csragent.Run(rctx, csragent.Options{
			Cluster:            kc,
			Namespace:          ns,
			TrustBundle:        e.trust,
			Listen:             e.addr,
			MetricsListen:      e.mAddr,
			TLS:                &tls.Config{Certificates: []tls.Certificate{serving}, MinVersion: tls.VersionTLS12},
			RootCertNamespaces: []string{appNS, "apps-2"},
			Istiod:             true,
			// The benchmark measures cert-manager, not the limiter;
			// TestLabFlood runs an agent with limits of its own.
			Limits: csragent.Limits{Unlimited: true},
		})
	}()
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-e.done:
			return false, fmt.Errorf("csr-agent exited: %w", err)
		default:
		}
		resp, err := http.Get("http://" + e.mAddr + "/healthz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	shared = e
	return e
}

func freePorts(t testing.TB, n int) []string {
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func (e *env) client(t testing.TB) securityv1alpha1.IstioCertificateServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(e.creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return securityv1alpha1.NewIstioCertificateServiceClient(conn)
}

func (e *env) token(t testing.TB, ns, sa string, audiences ...string) string {
	t.Helper()
	exp := int64(600)
	tr, err := e.kc.Kube.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// forgedToken signs a service-account token with the cluster's own signing
// key, so that it can carry claims TokenRequest refuses to make (an expiry
// in the past).
func (e *env) forgedToken(t testing.TB, ns, sa string, exp time.Time) string {
	t.Helper()
	keyPEM, err := os.ReadFile(e.lc.ServiceAccountSigningKey())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	acct, err := e.kc.Kube.CoreV1().ServiceAccounts(ns).Get(context.Background(), sa, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	kid := sha256.Sum256(pub)
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": base64.RawURLEncoding.EncodeToString(kid[:])})
	iat := exp.Add(-time.Hour)
	claims, _ := json.Marshal(map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local",
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{csragent.DefaultAudience},
		"exp": exp.Unix(), "iat": iat.Unix(), "nbf": iat.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]any{"name": sa, "uid": string(acct.UID)},
		},
	})
	signing := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func csrFor(t testing.TB, uris ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var us []*url.URL
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: us}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func call(ctx context.Context, c securityv1alpha1.IstioCertificateServiceClient, token, csr string, ttl int64) (*securityv1alpha1.IstioCertificateResponse, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return c.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: csr, ValidityDuration: ttl})
}

const httpbinID = "spiffe://cluster.local/ns/apps-1/sa/httpbin"

// TestLabWorkloadCertificate: a proxy's CSR with a TokenRequest token for
// apps-1/httpbin comes back signed by cert-manager, chained to the pinned
// root, and its CertificateRequest is gone afterwards.
func TestLabWorkloadCertificate(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := call(ctx, e.client(t), e.token(t, appNS, appSA, "istio-ca"), csrFor(t, httpbinID), 3600)
	if err != nil {
		t.Fatal(err)
	}
	chain := resp.GetCertChain()
	if len(chain) != 3 {
		t.Fatalf("chain of %d certificates, want leaf, intermediate, root", len(chain))
	}
	if chain[2] != string(e.root.CertPEM) {
		t.Error("chain does not end with the pinned root")
	}
	leaf, err := e.trust.VerifyChain([]byte(strings.Join(chain, "")), time.Now(), httpbinID)
	if err != nil {
		t.Fatal(err)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > time.Hour+time.Minute {
		t.Errorf("leaf lives %s, asked for 1h", life)
	}
	gvr, _, err := e.kc.Resource(ctx, certmanager.CertificateRequestGVK)
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		l, err := e.kc.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: "flotilla.dev/csr-agent=true"})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("finished CertificateRequests left behind: %v", err)
	}
}

// TestLabRefused: each bad call gets its own gRPC status.
func TestLabRefused(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := e.client(t)
	good := e.token(t, appNS, appSA, "istio-ca")
	for _, tc := range []struct {
		name  string
		token string
		csr   string
		ttl   int64
		code  codes.Code
		says  string
	}{
		{"CSR for another service account", good, csrFor(t, "spiffe://cluster.local/ns/apps-1/sa/other"), 3600, codes.PermissionDenied, "the token is for " + httpbinID},
		{"CSR for another trust domain", good, csrFor(t, "spiffe://evil.example/ns/apps-1/sa/httpbin"), 3600, codes.PermissionDenied, "asks for spiffe://evil.example"},
		{"token with the wrong audience", e.token(t, appNS, appSA, "not-istio-ca"), csrFor(t, httpbinID), 3600, codes.Unauthenticated, "audiences"},
		{"expired token", e.forgedToken(t, appNS, appSA, time.Now().Add(-time.Hour)), csrFor(t, httpbinID), 3600, codes.Unauthenticated, "expired"},
		{"no token", "", csrFor(t, httpbinID), 3600, codes.Unauthenticated, "no authorization"},
		{"malformed CSR", good, "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n", 3600, codes.InvalidArgument, "not a PEM"},
		{"CSR without a SPIFFE ID", good, csrFor(t), 3600, codes.InvalidArgument, "0 URI SANs"},
		{"oversized CSR", good, strings.Repeat("A", 64<<10-64), 3600, codes.InvalidArgument, "exceeds the limit"},
		{"lifetime above the cap", good, csrFor(t, httpbinID), int64((48 * time.Hour).Seconds()), codes.InvalidArgument, "exceeds the maximum"},
		{"otherName SAN beside the SPIFFE ID", good, csrWith(t, nil, []pkix.Extension{sanWithOtherName(t, httpbinID)}), 3600, codes.PermissionDenied, "otherName"},
		{"RSA-1024", good, csrWith(t, rsaKey(t, 1024), nil, httpbinID), 3600, codes.PermissionDenied, "1024 bits"},
		{"a CA request", good, csrWith(t, nil, []pkix.Extension{caExtension(t)}, httpbinID), 3600, codes.PermissionDenied, "CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := call(ctx, c, tc.token, tc.csr, tc.ttl)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("status %s (%v), want %s", got, err, tc.code)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.says) {
				t.Errorf("message %q does not say %q", msg, tc.says)
			}
		})
	}
	// The forged expired token is refused for its expiry alone: the same
	// forgery with a future expiry is accepted.
	t.Run("control: forged token that has not expired", func(t *testing.T) {
		if _, err := call(ctx, c, e.forgedToken(t, appNS, appSA, time.Now().Add(time.Hour)), csrFor(t, httpbinID), 3600); err != nil {
			t.Fatalf("forged unexpired token refused: %v", err)
		}
	})
}

// TestLabRootCertAndIstiod: istio-ca-root-cert holds the pinned bundle in
// the mesh namespaces and comes back when deleted; istiod's Certificate is
// issued with istiod's SPIFFE ID under the root.
func TestLabRootCertAndIstiod(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rootCert := func(ns string) (string, bool) {
		cm, err := e.kc.Kube.CoreV1().ConfigMaps(ns).Get(ctx, csragent.RootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			return "", false
		}
		return cm.Data[csragent.RootCertKey], true
	}
	waitRoot := func(ns string) {
		t.Helper()
		err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
			got, ok := rootCert(ns)
			return ok && got == string(e.root.CertPEM), nil
		})
		if err != nil {
			t.Fatalf("%s/%s never held the pinned root: %v", ns, csragent.RootCertConfigMap, err)
		}
	}
	waitRoot(appNS)
	waitRoot("apps-2")
	if err := e.kc.Kube.CoreV1().ConfigMaps(appNS).Delete(ctx, csragent.RootCertConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRoot(appNS)
	if _, ok := rootCert("default"); ok {
		t.Error("istio-ca-root-cert written outside the namespaces given")
	}

	var s *corev1.Secret
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var err error
		s, err = e.kc.Kube.CoreV1().Secrets(ns).Get(ctx, csragent.IstiodSecret, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("istiod-tls: %v", err)
	}
	leaf, err := e.trust.VerifyChain(s.Data["tls.crt"], time.Now(), "spiffe://cluster.local/ns/istio-system/sa/istiod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(leaf.DNSNames, ","), "istiod.istio-system.svc") {
		t.Errorf("istiod certificate DNS names %v", leaf.DNSNames)
	}
}

// TestLabMetrics: the agent counts calls by gRPC code.
func TestLabMetrics(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := call(ctx, e.client(t), "", csrFor(t, httpbinID), 3600); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	resp, err := http.Get("http://" + e.mAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`flotilla_csr_agent_requests_total{code="Unauthenticated"}`, "flotilla_csr_agent_request_duration_seconds_bucket", "flotilla_csr_agent_inflight_requests"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
