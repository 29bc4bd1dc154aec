package csragent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
)

// reviewer answers TokenReviews in process: a token "ns/sa" is that
// service account's with the istio-ca audience, "ns/sa/aud" carries aud
// instead, "user:name" is a user that is no service account, and anything
// else is rejected.
type reviewer struct{}

func (reviewer) RoundTrip(r *http.Request) (*http.Response, error) {
	var tr authnv1.TokenReview
	if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
		return nil, err
	}
	tok := tr.Spec.Token
	switch parts := strings.Split(tok, "/"); {
	case strings.HasPrefix(tok, "user:"):
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{DefaultAudience}, User: authnv1.UserInfo{Username: strings.TrimPrefix(tok, "user:")}}
	case len(parts) == 2:
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{DefaultAudience}, User: authnv1.UserInfo{Username: "system:serviceaccount:" + parts[0] + ":" + parts[1]}}
	case len(parts) == 3:
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{parts[2]}, User: authnv1.UserInfo{Username: "system:serviceaccount:" + parts[0] + ":" + parts[1]}}
	default:
		tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
	}
	body, _ := json.Marshal(&tr)
	return &http.Response{StatusCode: http.StatusCreated, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

func fuzzAgent(f testing.TB) *Server {
	f.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "http://east.invalid", Transport: reviewer{}, QPS: -1, ContentConfig: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"}})
	if err != nil {
		f.Fatal(err)
	}
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Options{Cluster: &kube.Cluster{Name: "east", Kube: cs}, Namespace: "istio-system", TrustBundle: pki.NewBundle(root.Cert)})
	if err != nil {
		f.Fatal(err)
	}
	return s
}

func fuzzCSR(f testing.TB, uris ...string) string {
	f.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		p, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		f.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// FuzzCreateCertificate sends arbitrary authorization headers, CSRs and
// lifetimes to the agent's CreateCertificate. The watch is never started,
// so a request that passes every check stops at signing with Unavailable:
// such a request must have carried a service-account token with the right
// audience and a CSR for that account's SPIFFE ID alone, without CA.
func FuzzCreateCertificate(f *testing.F) {
	s := fuzzAgent(f)
	good := fuzzCSR(f, "spiffe://cluster.local/ns/default/sa/sleep")
	f.Add("Bearer default/sleep", good, int64(0))
	f.Add("Bearer default/sleep", good, int64(3600))
	f.Add("Bearer default/sleep/other", good, int64(0))
	f.Add("Bearer kube-system/admin", good, int64(0))
	f.Add("Bearer user:alice", good, int64(0))
	f.Add("Basic default/sleep", good, int64(0))
	f.Add("Bearer default/sleep", fuzzCSR(f, "spiffe://cluster.local/ns/default/sa/sleep", "spiffe://x/ns/a/sa/b"), int64(0))
	f.Add("Bearer default/sleep", fuzzCSR(f), int64(-5))
	f.Add("Bearer default/sleep", "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n", int64(1<<62))
	f.Fuzz(func(t *testing.T, auth, csr string, ttl int64) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", auth))
		resp, err := s.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: csr, ValidityDuration: ttl})
		if err == nil || resp != nil {
			t.Fatalf("signed without cert-manager: %v", resp)
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied:
			return
		case codes.Unavailable:
			if !strings.Contains(err.Error(), "csr-agent is starting") {
				t.Fatalf("unavailable before signing: %v", err)
			}
		default:
			t.Fatalf("unexpected refusal: %v", err)
		}
		// Reached signing: everything the checks promise must hold.
		tok := strings.TrimSpace(auth[strings.Index(auth, " ")+1:])
		parts := strings.Split(tok, "/")
		if len(parts) != 2 {
			t.Fatalf("token %q reached signing", tok)
		}
		want := "spiffe://cluster.local/ns/" + parts[0] + "/sa/" + parts[1]
		b, _ := pem.Decode([]byte(csr))
		req, perr := x509.ParseCertificateRequest(b.Bytes)
		if perr != nil {
			t.Fatalf("unparsable CSR reached signing: %v", perr)
		}
		if len(req.URIs) != 1 || req.URIs[0].String() != want || len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses) > 0 {
			t.Fatalf("CSR for %v (DNS %v) reached signing with token for %s", req.URIs, req.DNSNames, want)
		}
	})
}
