package csragent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotillamesh/flotilla/pki"
)

// TestCheckCSR: the agent's refusals before anything reaches the cluster.
func TestCheckCSR(t *testing.T) {
	id := pki.SPIFFEID{TrustDomain: "cluster.local", Namespace: "apps", ServiceAccount: "web"}
	u, _ := url.Parse(id.String())
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	uri := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(id.String())}
	// otherName carrying a UPN, which Go's parser does not surface.
	upn, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: mustMarshal(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})})
	var other asn1.RawValue
	_, _ = asn1.Unmarshal(upn, &other)
	sanExt := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: mustMarshal(t, []asn1.RawValue{uri, other})}
	caExt := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(t, struct {
		IsCA bool `asn1:"optional"`
	}{true})}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		tmpl *x509.CertificateRequest
		code codes.Code
		says string
	}{
		{"istio-agent's request", p256, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}, URIs: []*url.URL{u}}, codes.OK, ""},
		{"otherName SAN", p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExt}}, codes.PermissionDenied, "otherName"},
		{"RSA-1024", rsa1024, &x509.CertificateRequest{URIs: []*url.URL{u}}, codes.PermissionDenied, "1024 bits"},
		{"P-521", p521, &x509.CertificateRequest{URIs: []*url.URL{u}}, codes.PermissionDenied, "P-521"},
		{"a CA request", p256, &x509.CertificateRequest{URIs: []*url.URL{u}, ExtraExtensions: []pkix.Extension{caExt}}, codes.PermissionDenied, "CA certificate"},
		{"a subject", p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}, URIs: []*url.URL{u}}, codes.PermissionDenied, "CN=admin"},
		{"a DNS SAN beside the URI", p256, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"web.apps"}}, codes.PermissionDenied, "DNS:web.apps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, tc.tmpl, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			_, err = checkCSR(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), id)
			if got := status.Code(err); got != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Fatalf("checkCSR: %v, want %s saying %q", err, tc.code, tc.says)
			}
		})
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
