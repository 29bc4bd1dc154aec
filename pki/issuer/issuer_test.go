package issuer_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

const ns = "istio-system"

func csrPEM(t *testing.T, key crypto.Signer, subj pkix.Name, dns ...string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subj, DNSNames: dns}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func intermediateSubject(cluster string) pkix.Name {
	return pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{cluster}}
}

func approved() []cmapi.CertificateRequestCondition {
	return []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue}}
}

func request(namespace string, req []byte, isCA bool, conds []cmapi.CertificateRequestCondition) *cmapi.CertificateRequest {
	return &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: namespace},
		Spec: cmapi.CertificateRequestSpec{
			Request:   req,
			IsCA:      isCA,
			Duration:  &metav1.Duration{Duration: 30 * 24 * time.Hour},
			IssuerRef: cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: "flotilla-mesh"},
		},
		Status: cmapi.CertificateRequestStatus{Conditions: conds},
	}
}

// TestSign: the hub signs exactly the cluster's approved intermediate, and
// refuses everything else with the reason cert-manager will show.
func TestSign(t *testing.T) {
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := csrPEM(t, p256, intermediateSubject("east"), "istiod.istio-system.svc")
	s := issuer.Signer{Cluster: "east", Namespace: ns, Root: root}
	denied := []cmapi.CertificateRequestCondition{
		{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue},
		{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue, Message: "no"},
	}
	for _, tc := range []struct {
		name string
		cr   *cmapi.CertificateRequest
		// pending: stays Pending; reason: the permanent cmReason; says: in the message.
		pending bool
		reason  string
		says    string
	}{
		{"the cluster's intermediate", request(ns, good, true, approved()), false, "", ""},
		{"unapproved", request(ns, good, true, nil), true, "", "approved"},
		{"denied", request(ns, good, true, denied), false, cmapi.CertificateRequestReasonDenied, "denied"},
		// Refused before any approver decides: the reason shows at once.
		{"unapproved, another cluster's intermediate", request(ns, csrPEM(t, p256, intermediateSubject("west"), "istiod.istio-system.svc"), true, nil),
			false, cmapi.CertificateRequestReasonFailed, "L=east"},
		{"denied, another namespace", request("default", good, true, denied), false, cmapi.CertificateRequestReasonDenied, "denied"},
		{"another namespace", request("default", good, true, approved()), false, cmapi.CertificateRequestReasonFailed, "namespace default"},
		{"not a CA", request(ns, good, false, approved()), false, cmapi.CertificateRequestReasonFailed, "isCA"},
		{"another cluster's intermediate", request(ns, csrPEM(t, p256, intermediateSubject("west"), "istiod.istio-system.svc"), true, approved()),
			false, cmapi.CertificateRequestReasonFailed, "L=east"},
		{"a SAN outside the profile", request(ns, csrPEM(t, p256, intermediateSubject("east"), "istiod.istio-system.svc", "evil.example"), true, approved()),
			false, cmapi.CertificateRequestReasonFailed, "evil.example"},
		{"a weak key", request(ns, csrPEM(t, rsa1024, intermediateSubject("east"), "istiod.istio-system.svc"), true, approved()),
			false, cmapi.CertificateRequestReasonFailed, "1024 bits"},
		{"not a CSR", request(ns, []byte("hello"), true, approved()), false, cmapi.CertificateRequestReasonFailed, "PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := s.Sign(context.Background(), tc.cr)
			var pending *issuer.PendingError
			var perm *issuer.PermanentError
			switch {
			case tc.pending:
				if !errors.As(err, &pending) || !strings.Contains(err.Error(), tc.says) {
					t.Fatalf("Sign: %v, want pending saying %q", err, tc.says)
				}
			case tc.reason != "":
				if !errors.As(err, &perm) || perm.CMReason != tc.reason || !strings.Contains(err.Error(), tc.says) {
					t.Fatalf("Sign: %v, want %s saying %q", err, tc.reason, tc.says)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				blk, _ := pem.Decode(b.ChainPEM)
				cert, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				// pathlen:0 included: the full built-in profile.
				if err := pki.CheckIntermediate(cert, "east", ns); err != nil {
					t.Fatal(err)
				}
				if err := cert.CheckSignatureFrom(root.Cert); err != nil {
					t.Fatal(err)
				}
				if string(b.CAPEM) != string(root.CertPEM) {
					t.Error("status.ca is not the root")
				}
				if life := cert.NotAfter.Sub(cert.NotBefore); life > 31*24*time.Hour {
					t.Errorf("lifetime %s, want the requested 30 days", life)
				}
			}
		})
	}
}

// TestOfflineRoot: without the root key the issuer is not Ready and
// requests wait instead of failing.
func TestOfflineRoot(t *testing.T) {
	root, _ := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	certOnly, err := pki.ImportRootCert(root.CertPEM, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := issuer.Signer{Cluster: "east", Namespace: ns, Root: certOnly}
	_, err = s.Sign(context.Background(), request(ns, csrPEM(t, p256, intermediateSubject("east"), "istiod.istio-system.svc"), true, approved()))
	var pending *issuer.PendingError
	if !errors.As(err, &pending) {
		t.Fatalf("Sign with an offline root: %v, want pending", err)
	}
	iss := &v1alpha1.MeshIssuer{ObjectMeta: metav1.ObjectMeta{Name: "flotilla-mesh", Namespace: ns}}
	if err := s.Check(context.Background(), iss); !errors.As(err, &pending) {
		t.Fatalf("Check with an offline root: %v, want pending", err)
	}
}

// TestRequestValidators: each object-level rule on its own.
func TestRequestValidators(t *testing.T) {
	other := request(ns, nil, true, approved())
	other.Spec.IssuerRef.Kind = "MeshClusterIssuer"
	for _, tc := range []struct {
		name string
		v    issuer.RequestValidator
		cr   *cmapi.CertificateRequest
		ok   bool
	}{
		{"approval: approved", issuer.Approval{}, request(ns, nil, true, approved()), true},
		{"approval: none yet", issuer.Approval{}, request(ns, nil, true, nil), false},
		{"namespace: control plane", issuer.Namespace{Want: ns}, request(ns, nil, true, nil), true},
		{"namespace: other", issuer.Namespace{Want: ns}, request("default", nil, true, nil), false},
		{"isCA: yes", issuer.IsCA{}, request(ns, nil, true, nil), true},
		{"isCA: no", issuer.IsCA{}, request(ns, nil, false, nil), false},
		{"issuerRef: MeshIssuer", issuer.IssuerRef{}, request(ns, nil, true, nil), true},
		{"issuerRef: unknown kind", issuer.IssuerRef{}, other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.v.Valid(tc.cr); (err == nil) != tc.ok {
				t.Fatalf("Valid: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
