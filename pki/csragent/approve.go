package csragent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki/certmanager"
)

// HubApprovedReason is the reason of the Approved condition the hub
// writes on the requests of the serving Certificates it keeps.
const HubApprovedReason = "hub.flotilla.dev"

// hubApproverFieldManager owns that Approved condition.
const hubApproverFieldManager = "flotilla-hub-approver"

// servingCertificates are the Certificates the hub writes under the
// workload issuer: the agent's and istiod's serving certificates.
func servingCertificates() []string { return []string{ServiceName, IstiodCertificate} }

// CertificateApprover approves, in a cluster's control-plane namespace,
// the CertificateRequests cert-manager makes for the serving Certificates
// the hub wrote there (servingCertificates), for clusters whose
// cert-manager runs without its default approver. A request is approved
// only when it is exactly its Certificate's: owned by it, for the
// workload issuer it names, not a CA, and its CSR asks for the
// Certificate's DNS names and URIs and nothing else. It never denies and
// never overrides a decision.
type CertificateApprover struct {
	Cluster   *kube.Cluster
	Namespace string
	// Log; nil discards.
	Log *slog.Logger
}

func (a *CertificateApprover) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

// errNotOurs: the request is not one of a serving Certificate's; left alone.
var errNotOurs = errors.New("not a request of the hub's serving Certificates")

// Reconcile approves cr when it is exactly its serving Certificate's;
// it reports whether it did.
func (a *CertificateApprover) Reconcile(ctx context.Context, cr *cmapi.CertificateRequest) (bool, error) {
	if cr.Namespace != a.Namespace || decided(cr) {
		return false, nil
	}
	crt, err := a.certificateOf(ctx, cr)
	if errors.Is(err, errNotOurs) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := matches(cr, crt); err != nil {
		a.log().Warn("certificate request not approved", "cluster", a.Cluster.Name, "request", cr.Namespace+"/"+cr.Name, "certificate", crt.Name, "reason", err.Error())
		return false, nil
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateRequestKind,
		// Conditional on the request as read: a decision written since is
		// a conflict, never a second one beside it.
		"metadata": map[string]any{"name": cr.Name, "namespace": cr.Namespace, "resourceVersion": cr.ResourceVersion},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": string(cmapi.CertificateRequestConditionApproved), "status": string(cmmeta.ConditionTrue),
			"reason": HubApprovedReason, "message": "Approved by the flotilla hub: exactly Certificate " + crt.Name + ", which the hub keeps",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}},
	}}
	gvr, _, err := a.Cluster.Resource(ctx, cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateRequestKind))
	if err != nil {
		return false, err
	}
	// Not forced: another approver's decision in the meantime stands.
	_, err = a.Cluster.Dynamic.Resource(gvr).Namespace(cr.Namespace).ApplyStatus(ctx, cr.Name, obj, metav1.ApplyOptions{FieldManager: hubApproverFieldManager})
	switch {
	case apierrors.IsConflict(err):
		// Changed since read (another approver's decision among the
		// possibilities): the watch brings the new version.
		return false, nil
	case apierrors.IsForbidden(err):
		// cert-manager's webhook checks `approve` on the signer: without
		// it the hub leaves approval to the cluster's approver.
		a.log().Warn("certificate request: the hub may not approve; waiting for the cluster's approver", "cluster", a.Cluster.Name, "request", cr.Namespace+"/"+cr.Name,
			"needs", "verb approve on signers.cert-manager.io "+SignerName(cr.Namespace, certmanager.WorkloadIssuer()), "error", err.Error())
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%s: approve CertificateRequest %s/%s: %w", a.Cluster.Name, cr.Namespace, cr.Name, err)
	}
	a.log().Info("certificate request approved", "cluster", a.Cluster.Name, "request", cr.Namespace+"/"+cr.Name, "certificate", crt.Name)
	return true, nil
}

// certificateOf is the serving Certificate cr was made for, or errNotOurs.
func (a *CertificateApprover) certificateOf(ctx context.Context, cr *cmapi.CertificateRequest) (*cmapi.Certificate, error) {
	name := cr.Annotations[cmapi.CertificateNameKey]
	if !slices.Contains(servingCertificates(), name) {
		return nil, errNotOurs
	}
	gvr, _, err := a.Cluster.Resource(ctx, certmanager.CertificateGVK)
	if err != nil {
		return nil, err
	}
	u, err := a.Cluster.Dynamic.Resource(gvr).Namespace(cr.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, errNotOurs
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read Certificate %s/%s: %w", a.Cluster.Name, cr.Namespace, name, err)
	}
	crt := &cmapi.Certificate{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, crt); err != nil {
		return nil, fmt.Errorf("%s: decode Certificate %s/%s: %w", a.Cluster.Name, cr.Namespace, name, err)
	}
	if crt.Labels[kube.ManagedByLabel] != kube.ManagedBy {
		return nil, errNotOurs // a user's Certificate of that name: theirs to approve
	}
	return crt, nil
}

// matches reports how cr departs from what crt asks for.
func matches(cr *cmapi.CertificateRequest, crt *cmapi.Certificate) error {
	owned := slices.ContainsFunc(cr.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.Kind == cmapi.CertificateKind && o.UID == crt.UID
	})
	if !owned {
		return fmt.Errorf("not owned by Certificate %s (uid %s)", crt.Name, crt.UID)
	}
	if cr.Spec.IssuerRef != crt.Spec.IssuerRef || crt.Spec.IssuerRef.Name != certmanager.WorkloadIssuerName {
		return fmt.Errorf("issuer %v, want the workload issuer %s the Certificate names", cr.Spec.IssuerRef, certmanager.WorkloadIssuerName)
	}
	if cr.Spec.IsCA {
		return errors.New("asks for a CA")
	}
	b, _ := pem.Decode(cr.Spec.Request)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return errors.New("spec.request is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return fmt.Errorf("spec.request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("spec.request: %w", err)
	}
	var uris []string
	for _, u := range csr.URIs {
		uris = append(uris, u.String())
	}
	switch {
	case !sameSet(csr.DNSNames, crt.Spec.DNSNames):
		return fmt.Errorf("DNS names %v, the Certificate's %v", csr.DNSNames, crt.Spec.DNSNames)
	case !sameSet(uris, crt.Spec.URIs):
		return fmt.Errorf("URIs %v, the Certificate's %v", uris, crt.Spec.URIs)
	case len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0:
		return fmt.Errorf("IP or email SANs the Certificate does not ask for")
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// decided: an approver has approved or denied cr.
func decided(cr *cmapi.CertificateRequest) bool {
	return slices.ContainsFunc(cr.Status.Conditions, func(c cmapi.CertificateRequestCondition) bool {
		return (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue
	})
}

// ApprovePending approves once what is pending in the namespace: what an
// apply without a running hub does (the requests of Certificates written
// by this apply appear later, and wait for the next apply or the hub).
func (a *CertificateApprover) ApprovePending(ctx context.Context) (int, error) {
	gvr, _, err := a.Cluster.Resource(ctx, cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateRequestKind))
	if err != nil {
		return 0, err
	}
	list, err := a.Cluster.Dynamic.Resource(gvr).Namespace(a.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("%s: list CertificateRequests in %s: %w", a.Cluster.Name, a.Namespace, err)
	}
	n := 0
	var errs []error
	for i := range list.Items {
		cr := &cmapi.CertificateRequest{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, cr); err != nil {
			errs = append(errs, fmt.Errorf("%s: decode CertificateRequest %s/%s: %w", a.Cluster.Name, a.Namespace, list.Items[i].GetName(), err))
			continue
		}
		ok, err := a.Reconcile(ctx, cr)
		if ok {
			n++
		}
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// Run watches the namespace's CertificateRequests until ctx ends and
// approves each serving Certificate's request as it appears.
func (a *CertificateApprover) Run(ctx context.Context) error {
	gvr, _, err := a.Cluster.Resource(ctx, cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateRequestKind))
	if err != nil {
		return err
	}
	return a.Cluster.Watch(ctx, gvr, a.Namespace, a.handle)
}

// handle approves one CertificateRequest the watch saw, when it is a
// serving Certificate's; it asks to see it again when that failed.
func (a *CertificateApprover) handle(ctx context.Context, u *unstructured.Unstructured) (retry bool) {
	cr := &cmapi.CertificateRequest{}
	err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cr)
	if err != nil {
		err = fmt.Errorf("%s: decode CertificateRequest %s/%s: %w", a.Cluster.Name, u.GetNamespace(), u.GetName(), err)
	} else {
		_, err = a.Reconcile(ctx, cr)
	}
	if err != nil {
		a.log().Warn("certificate request approval", "cluster", a.Cluster.Name, "error", err.Error())
		return true
	}
	return false
}
