package csrpolicy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/pki/csrpolicy"
)

// keys are generated once: RSA generation dominates the test's time.
type keys struct {
	p256, p224, p384 crypto.Signer
	rsa1024, rsa2048 crypto.Signer
}

func newKeys(t *testing.T) keys {
	t.Helper()
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rs := func(bits int) crypto.Signer {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	return keys{p256: ec(elliptic.P256()), p224: ec(elliptic.P224()), p384: ec(elliptic.P384()), rsa1024: rs(1024), rsa2048: rs(2048)}
}

func request(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// rawSAN encodes a subjectAltName extension of the given GeneralNames, so
// that tests can carry kinds Go's template cannot (otherName, registeredID).
func rawSAN(t *testing.T, names ...asn1.RawValue) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: b}
}

func uriSAN(s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(s)}
}

func otherName(t *testing.T) asn1.RawValue {
	t.Helper()
	inner, err := asn1.Marshal(struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue `asn1:"tag:0,explicit"`
	}{asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte("admin@corp")}})
	if err != nil {
		t.Fatal(err)
	}
	var seq asn1.RawValue
	if _, err := asn1.Unmarshal(inner, &seq); err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: seq.Bytes}
}

func basicConstraints(t *testing.T, ca bool) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{ca})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: b}
}

func TestValidators(t *testing.T) {
	k := newKeys(t)
	const spiffe = "spiffe://cluster.local/ns/a/sa/b"
	u, _ := url.Parse(spiffe)
	intermediate := pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"east"}}
	for _, tc := range []struct {
		name string
		v    csrpolicy.Validator
		key  crypto.Signer
		tmpl *x509.CertificateRequest
		// refuse: "" accepts; otherwise a word the reason must carry.
		refuse string
	}{
		{"key: P-256", csrpolicy.DefaultKey, k.p256, &x509.CertificateRequest{}, ""},
		{"key: P-384", csrpolicy.DefaultKey, k.p384, &x509.CertificateRequest{}, ""},
		{"key: P-224", csrpolicy.DefaultKey, k.p224, &x509.CertificateRequest{}, "P-224"},
		{"key: RSA-2048", csrpolicy.DefaultKey, k.rsa2048, &x509.CertificateRequest{}, ""},
		{"key: RSA-1024", csrpolicy.DefaultKey, k.rsa1024, &x509.CertificateRequest{}, "1024 bits"},

		{"SAN: the one URI", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(spiffe)}}, k.p256,
			&x509.CertificateRequest{URIs: []*url.URL{u}}, ""},
		{"SAN: URI and DNS", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(spiffe)}}, k.p256,
			&x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"evil.example"}}, "DNS:evil.example"},
		{"SAN: URI and otherName", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(spiffe)}}, k.p256,
			&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{rawSAN(t, uriSAN(spiffe), otherName(t))}}, "otherName"},
		{"SAN: registeredID only", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(spiffe)}}, k.p256,
			&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{rawSAN(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{42, 3}})}}, "registeredID"},
		{"SAN: none", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(spiffe)}}, k.p256,
			&x509.CertificateRequest{}, "want exactly"},
		{"SAN: istiod DNS", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.DNS("istiod.istio-system.svc")}}, k.p256,
			&x509.CertificateRequest{DNSNames: []string{"istiod.istio-system.svc"}}, ""},
		{"SAN: another namespace's istiod", csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.DNS("istiod.istio-system.svc")}}, k.p256,
			&x509.CertificateRequest{DNSNames: []string{"istiod.other.svc"}}, "istiod.other.svc"},

		{"subject: empty, as istio-agent sends", csrpolicy.Subject{}, k.p256, &x509.CertificateRequest{}, ""},
		{"subject: workload with an O", csrpolicy.Subject{}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Istio"}}}, "empty subject"},
		{"subject: intermediate", csrpolicy.Subject{Organization: "Istio", CommonName: "Intermediate CA", Locality: "east"}, k.p256,
			&x509.CertificateRequest{Subject: intermediate}, ""},
		{"subject: another cluster's intermediate", csrpolicy.Subject{Organization: "Istio", CommonName: "Intermediate CA", Locality: "east"}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"west"}}}, "L=east"},
		{"subject: an extra OU", csrpolicy.Subject{Organization: "Istio", CommonName: "Intermediate CA", Locality: "east"}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Istio"}, OrganizationalUnit: []string{"x"}, CommonName: "Intermediate CA", Locality: []string{"east"}}}, "want"},
		{"subject: missing L", csrpolicy.Subject{Organization: "Istio", CommonName: "Intermediate CA", Locality: "east"}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA"}}, "want"},

		{"istio-agent subject: empty O", csrpolicy.IstioAgentSubject{}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}}, ""},
		{"istio-agent subject: none", csrpolicy.IstioAgentSubject{}, k.p256, &x509.CertificateRequest{}, ""},
		{"istio-agent subject: a CN", csrpolicy.IstioAgentSubject{}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, "CN=admin"},
		{"istio-agent subject: O=Istio", csrpolicy.IstioAgentSubject{}, k.p256,
			&x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Istio"}}}, "O=Istio"},

		{"leaf: no basicConstraints", csrpolicy.BasicConstraints{CA: false}, k.p256, &x509.CertificateRequest{}, ""},
		{"leaf: asks for a CA", csrpolicy.BasicConstraints{CA: false}, k.p256,
			&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{basicConstraints(t, true)}}, "CA certificate"},
		{"intermediate: CA:true", csrpolicy.BasicConstraints{CA: true}, k.p256,
			&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{basicConstraints(t, true)}}, ""},
		{"intermediate: CA:false", csrpolicy.BasicConstraints{CA: true}, k.p256,
			&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{basicConstraints(t, false)}}, "want a CA"},

		{"signature: good", csrpolicy.Signature{}, k.p256, &x509.CertificateRequest{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr := request(t, tc.key, tc.tmpl)
			err := csrpolicy.Chain{tc.v}.Valid(csr)
			switch {
			case tc.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refuse != "" && err == nil:
				t.Fatal("accepted")
			case tc.refuse != "" && (!errors.Is(err, csrpolicy.ErrRefused) || !strings.Contains(err.Error(), tc.refuse)):
				t.Fatalf("refusal %q does not say %q (or is not ErrRefused)", err, tc.refuse)
			}
		})
	}
}

// TestSignatureRefusesTampering: a request whose body changed after it
// was signed is refused.
func TestSignatureRefusesTampering(t *testing.T) {
	k := newKeys(t)
	csr := request(t, k.p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "a"}})
	csr.Signature[len(csr.Signature)-1] ^= 1
	if err := (csrpolicy.Chain{csrpolicy.Signature{}}).Valid(csr); err == nil {
		t.Fatal("tampered request accepted")
	}
}

// TestChainStopsAtFirstRefusal: the chain reports the first rule that
// refuses, in order.
func TestChainStopsAtFirstRefusal(t *testing.T) {
	k := newKeys(t)
	csr := request(t, k.rsa1024, &x509.CertificateRequest{DNSNames: []string{"x"}})
	err := csrpolicy.Chain{csrpolicy.Signature{}, csrpolicy.DefaultKey, csrpolicy.ExactSANs{}}.Valid(csr)
	var r *csrpolicy.Refusal
	if !errors.As(err, &r) || r.Rule != "key" {
		t.Fatalf("refusal %v, want the key rule's", err)
	}
}
