package csragent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// csrWith makes a CSR from tmpl, with the given URI SANs.
func csrWith(t *testing.T, tmpl *x509.CertificateRequest, uris ...string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range uris {
		p, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestBadCSRs is the csr-agent's part of the bad-input corpus: each request
// is refused with its gRPC code and a message that names what is wrong.
func TestBadCSRs(t *testing.T) {
	s := fuzzAgent(t)
	id := "spiffe://cluster.local/ns/default/sa/sleep"
	good := fuzzCSR(t, id)
	bc, _ := asn1.Marshal(struct{ IsCA bool }{true})
	caReq := csrWith(t, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}}, id)
	sig := []byte(good)
	sig[len(sig)/2] ^= 1
	cases := []struct {
		name, auth, csr string
		ttl             int64
		code            codes.Code
		want            string
	}{
		{"no token", "", good, 0, codes.Unauthenticated, "authorization"},
		{"basic scheme", "Basic default/sleep", good, 0, codes.Unauthenticated, "Bearer"},
		{"rejected token", "Bearer garbage", good, 0, codes.Unauthenticated, "token rejected"},
		{"wrong audience", "Bearer default/sleep/kubernetes", good, 0, codes.Unauthenticated, "audiences"},
		{"user, not a service account", "Bearer user:alice", good, 0, codes.PermissionDenied, `"alice" is not a service account`},
		{"not PEM", "Bearer default/sleep", "hello", 0, codes.InvalidArgument, "csr is not a PEM CERTIFICATE REQUEST"},
		{"a certificate, not a CSR", "Bearer default/sleep", "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", 0, codes.InvalidArgument, "csr is not a PEM CERTIFICATE REQUEST"},
		{"DER garbage", "Bearer default/sleep", "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n", 0, codes.InvalidArgument, "csr"},
		{"broken signature", "Bearer default/sleep", string(sig), 0, codes.InvalidArgument, "csr"},
		{"another identity", "Bearer kube-system/admin", good, 0, codes.PermissionDenied, "spiffe://cluster.local/ns/kube-system/sa/admin"},
		{"two identities", "Bearer default/sleep", fuzzCSR(t, id, "spiffe://cluster.local/ns/a/sa/b"), 0, codes.InvalidArgument, "2 URI SANs"},
		{"no identity", "Bearer default/sleep", fuzzCSR(t), 0, codes.InvalidArgument, "0 URI SANs"},
		{"DNS SAN", "Bearer default/sleep", csrWith(t, &x509.CertificateRequest{DNSNames: []string{"evil.example"}}, id), 0, codes.PermissionDenied, "SANs [DNS:evil.example"},
		{"asks for a CA", "Bearer default/sleep", caReq, 0, codes.PermissionDenied, "CA certificate"},
		{"negative lifetime", "Bearer default/sleep", good, -1, codes.InvalidArgument, "validity_duration -1"},
		{"lifetime too long", "Bearer default/sleep", good, 1 << 40, codes.InvalidArgument, "validity_duration"},
		{"lifetime too short", "Bearer default/sleep", good, 60, codes.InvalidArgument, "validity_duration 60s"},
		{"CSR too large", "Bearer default/sleep", good + strings.Repeat("x", DefaultMaxCSRBytes), 0, codes.InvalidArgument, "exceeds the limit"},
	}
	passed := 0
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.auth != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", tc.auth))
			}
			_, err := s.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: tc.csr, ValidityDuration: tc.ttl})
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %s with %q", err, tc.code, tc.want)
			}
		})
		if ok {
			passed++
		}
	}
	t.Logf("bad-input corpus (csr-agent): %d of %d cases pass", passed, len(cases))
}
