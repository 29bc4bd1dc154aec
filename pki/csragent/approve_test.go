package csragent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// TestCertificateApproverMatches: the hub approves a serving
// Certificate's request only when it is exactly that Certificate's.
func TestCertificateApproverMatches(t *testing.T) {
	crt := &cmapi.Certificate{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(IstiodCertificateObject("istio-system", "", "flotilla-workload").Object, crt); err != nil {
		t.Fatal(err)
	}
	crt.UID = types.UID("istiod-uid")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := func(dns []string, uris []string, ips ...net.IP) []byte {
		var us []*url.URL
		for _, u := range uris {
			p, _ := url.Parse(u)
			us = append(us, p)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: dns, URIs: us, IPAddresses: ips}, key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	good := csr(crt.Spec.DNSNames, crt.Spec.URIs)
	request := func(edit func(*cmapi.CertificateRequest)) *cmapi.CertificateRequest {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: "istiod-1", Namespace: "istio-system",
				OwnerReferences: []metav1.OwnerReference{{Kind: cmapi.CertificateKind, Name: crt.Name, UID: crt.UID}}},
			Spec: cmapi.CertificateRequestSpec{Request: good, IssuerRef: crt.Spec.IssuerRef},
		}
		if edit != nil {
			edit(cr)
		}
		return cr
	}
	for _, tc := range []struct {
		name string
		cr   *cmapi.CertificateRequest
		says string // "" approves
	}{
		{"the Certificate's own", request(nil), ""},
		{"names in another order", request(func(cr *cmapi.CertificateRequest) {
			dns := append([]string{crt.Spec.DNSNames[2]}, crt.Spec.DNSNames[:2]...)
			cr.Spec.Request = csr(dns, crt.Spec.URIs)
		}), ""},
		{"not owned by it", request(func(cr *cmapi.CertificateRequest) { cr.OwnerReferences[0].UID = "other" }), "not owned"},
		{"no owner", request(func(cr *cmapi.CertificateRequest) { cr.OwnerReferences = nil }), "not owned"},
		{"another issuer", request(func(cr *cmapi.CertificateRequest) {
			cr.Spec.IssuerRef = cmmeta.IssuerReference{Name: "flotilla-mesh", Kind: "MeshIssuer", Group: "issuer.flotilla.dev"}
		}), "issuer"},
		{"a CA", request(func(cr *cmapi.CertificateRequest) { cr.Spec.IsCA = true }), "CA"},
		{"an extra DNS name", request(func(cr *cmapi.CertificateRequest) {
			cr.Spec.Request = csr(append(crt.Spec.DNSNames, "evil.example"), crt.Spec.URIs)
		}), "evil.example"},
		{"another identity", request(func(cr *cmapi.CertificateRequest) {
			cr.Spec.Request = csr(crt.Spec.DNSNames, []string{"spiffe://cluster.local/ns/istio-system/sa/default"})
		}), "URIs"},
		{"an IP SAN", request(func(cr *cmapi.CertificateRequest) {
			cr.Spec.Request = csr(crt.Spec.DNSNames, crt.Spec.URIs, net.IPv4(10, 0, 0, 1))
		}), "IP"},
		{"not a CSR", request(func(cr *cmapi.CertificateRequest) { cr.Spec.Request = []byte("hello") }), "PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := matches(tc.cr, crt)
			switch {
			case tc.says == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.says != "" && (err == nil || !strings.Contains(err.Error(), tc.says)):
				t.Fatalf("got %v, want a refusal saying %q", err, tc.says)
			}
		})
	}
}
