// Package issuer is the hub's cert-manager external issuer: it signs the
// CertificateRequests in member clusters that name a MeshIssuer
// (issuer.flotilla.dev), in the shape of cert-manager's issuer-lib: a
// Signer with Check and Sign, errors typed as pending or permanent, and a
// controller that maps them onto the request's Ready condition and signs
// only approved requests.
//
// The hub signs exactly one thing per cluster: that cluster's intermediate
// (isCA, O=Istio CN=Intermediate CA L=<cluster>, SAN DNS
// istiod.<ns>.svc, an allowed key), requested from that cluster's
// control-plane namespace. What it issues carries pathlen:0 and the
// built-in profile's key usages, which a cert-manager Certificate cannot
// ask for.
package issuer

import (
	"errors"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/csrpolicy"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// PendingError: the request may be signed later (not approved yet, the
// hub's root is offline); the request stays Pending.
type PendingError struct{ Reason string }

func (e *PendingError) Error() string { return e.Reason }

// PermanentError: the request will never be signed; it is marked Failed
// (or Denied) and cert-manager backs off and creates a new one.
type PermanentError struct {
	// CMReason is the Ready condition's reason: Failed or Denied.
	CMReason string
	Reason   string
}

func (e *PermanentError) Error() string { return e.Reason }

func failed(format string, args ...any) error {
	return &PermanentError{CMReason: cmapi.CertificateRequestReasonFailed, Reason: fmt.Sprintf(format, args...)}
}

// RequestValidator is one rule over the CertificateRequest object, before
// its CSR is looked at.
type RequestValidator interface {
	Name() string
	Valid(*cmapi.CertificateRequest) error
}

// Approval: signed only once Approved, never when Denied. cert-manager's
// approver, approver-policy or the hub's own approval (Controller.Approve)
// decides; signing only obeys.
type Approval struct{}

func (Approval) Name() string { return "approval" }
func (Approval) Valid(cr *cmapi.CertificateRequest) error {
	var approved bool
	for _, c := range cr.Status.Conditions {
		if c.Status != cmmeta.ConditionTrue {
			continue
		}
		switch c.Type {
		case cmapi.CertificateRequestConditionDenied:
			return &PermanentError{CMReason: cmapi.CertificateRequestReasonDenied, Reason: "the request was denied: " + c.Message}
		case cmapi.CertificateRequestConditionApproved:
			approved = true
		}
	}
	if !approved {
		return &PendingError{Reason: "waiting for the request to be approved"}
	}
	return nil
}

// Namespace: only requests from the cluster's control-plane namespace.
type Namespace struct{ Want string }

func (Namespace) Name() string { return "namespace" }
func (n Namespace) Valid(cr *cmapi.CertificateRequest) error {
	if cr.Namespace != n.Want {
		return failed("request from namespace %s: the mesh issuer signs only in the control-plane namespace %s", cr.Namespace, n.Want)
	}
	return nil
}

// IssuerRef: the request names a MeshIssuer (no other kind of the group).
type IssuerRef struct{}

func (IssuerRef) Name() string { return "issuerRef" }
func (IssuerRef) Valid(cr *cmapi.CertificateRequest) error {
	if k := cr.Spec.IssuerRef.Kind; k != v1alpha1.MeshIssuerKind {
		return failed("issuerRef kind %q, want %s", k, v1alpha1.MeshIssuerKind)
	}
	return nil
}

// IsCA: the request asks for a CA, as an intermediate must.
type IsCA struct{}

func (IsCA) Name() string { return "isCA" }
func (IsCA) Valid(cr *cmapi.CertificateRequest) error {
	if !cr.Spec.IsCA {
		return failed("spec.isCA is false: the mesh issuer signs only the cluster's intermediate CA")
	}
	return nil
}

// Requests is the object-level chain of cluster's intermediate requests,
// approval aside: what the hub approves by and signs by.
func Requests(namespace string) []RequestValidator {
	return []RequestValidator{IssuerRef{}, Namespace{Want: namespace}, IsCA{}}
}

// denied is the Denied refusal when cr carries the Denied condition.
func denied(cr *cmapi.CertificateRequest) error {
	for _, c := range cr.Status.Conditions {
		if c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue {
			return &PermanentError{CMReason: cmapi.CertificateRequestReasonDenied, Reason: "the request was denied: " + c.Message}
		}
	}
	return nil
}

// decided: an approver has approved or denied cr.
func decided(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		if (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue {
			return true
		}
	}
	return false
}

// Intermediate is the CSR chain of cluster's intermediate: the built-in
// profile's subject and SAN, an allowed key, a CA request.
func Intermediate(cluster, namespace string) csrpolicy.Chain {
	return csrpolicy.Chain{
		csrpolicy.Signature{},
		csrpolicy.DefaultKey,
		csrpolicy.Subject{Organization: pki.Organization, CommonName: pki.IntermediateCommonName, Locality: cluster},
		csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.DNS(pki.IstiodDNSName(namespace))}},
		csrpolicy.BasicConstraints{CA: true},
	}
}

// asPermanent maps a CSR refusal onto a permanent failure.
func asPermanent(err error) error {
	var p *PermanentError
	var q *PendingError
	if errors.As(err, &p) || errors.As(err, &q) {
		return err
	}
	return failed("%v", err)
}
