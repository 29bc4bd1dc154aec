package issuer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// PEMBundle is what Sign returns: the issued certificate (and anything
// between it and the root) and the root it chains to.
type PEMBundle struct {
	ChainPEM []byte
	CAPEM    []byte
}

// Signer signs one member cluster's intermediate with the hub's root.
type Signer struct {
	// Cluster is the member cluster's name: the intermediate's L=.
	Cluster string
	// Namespace is its control-plane namespace.
	Namespace string
	// Root is the mesh's root; without its key every request waits.
	Root *pki.Root
	// MaxLifetime caps the requested duration; 0 is
	// pki.DefaultIntermediateLifetime.
	MaxLifetime time.Duration
}

// Check reports whether iss can sign now: the issuer is the one of this
// cluster's control-plane namespace and the hub holds the root key.
func (s Signer) Check(_ context.Context, iss *v1alpha1.MeshIssuer) error {
	if iss.Namespace != s.Namespace {
		return failed("MeshIssuer %s/%s is outside the control-plane namespace %s", iss.Namespace, iss.Name, s.Namespace)
	}
	if s.Root == nil || !s.Root.HasKey() {
		return &PendingError{Reason: "the hub does not hold the mesh root's key (offline root)"}
	}
	return nil
}

// Admit runs the policy over cr, approval aside: nil when cr is exactly
// the cluster's intermediate, which the hub approves and signs.
func (s Signer) Admit(cr *cmapi.CertificateRequest) (*x509.CertificateRequest, error) {
	for _, v := range Requests(s.Namespace) {
		if err := v.Valid(cr); err != nil {
			return nil, err
		}
	}
	b, _ := pem.Decode(cr.Spec.Request)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, failed("spec.request is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, failed("spec.request: %v", err)
	}
	if err := Intermediate(s.Cluster, s.Namespace).Valid(csr); err != nil {
		return nil, asPermanent(err)
	}
	return csr, nil
}

// Sign runs the policy over cr and, when it allows and the request is
// approved, signs the CSR with the built-in intermediate profile
// (pathlen:0, the four key usages). A request outside the policy is
// refused even before an approver decides, so that its reason shows at
// once; a denied one is refused as Denied whatever it asks.
func (s Signer) Sign(_ context.Context, cr *cmapi.CertificateRequest) (PEMBundle, error) {
	if err := denied(cr); err != nil {
		return PEMBundle{}, err
	}
	csr, err := s.Admit(cr)
	if err != nil {
		return PEMBundle{}, err
	}
	if err := (Approval{}).Valid(cr); err != nil {
		return PEMBundle{}, err
	}
	if s.Root == nil || !s.Root.HasKey() {
		return PEMBundle{}, &PendingError{Reason: "the hub does not hold the mesh root's key (offline root)"}
	}
	life := s.MaxLifetime
	if life == 0 {
		life = pki.DefaultIntermediateLifetime
	}
	if d := cr.Spec.Duration; d != nil && d.Duration > 0 && d.Duration < life {
		life = d.Duration
	}
	// Only the CSR's public key and subject travel on; SANs and
	// constraints come from the profile.
	certPEM, err := s.Root.SignIntermediateCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}), s.Namespace, life)
	if err != nil {
		return PEMBundle{}, err
	}
	return PEMBundle{ChainPEM: certPEM, CAPEM: s.Root.CertPEM}, nil
}
