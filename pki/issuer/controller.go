package issuer

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// FieldManager owns the status fields the issuer writes (the Ready
// condition, certificate, ca, failureTime); cert-manager's approver owns
// Approved/Denied beside it.
const FieldManager = "flotilla-issuer"

// ApproverFieldManager owns the Approved condition the hub writes
// (Controller.Approve): a manager apart from the issuer's, as approving
// and signing are apart in cert-manager's API.
const ApproverFieldManager = "flotilla-approver"

// ApprovedReason is the reason of the hub's Approved condition, named
// after the approver as cert-manager's own ("cert-manager.io") is.
const ApprovedReason = "issuer.flotilla.dev"

var certificateRequests = schema.GroupVersionResource{Group: cmapi.SchemeGroupVersion.Group, Version: cmapi.SchemeGroupVersion.Version, Resource: "certificaterequests"}

// Outcome is what Reconcile did to one request.
type Outcome string

const (
	Skipped Outcome = "skipped" // not ours, or already finished
	Issued  Outcome = "issued"
	Pending Outcome = "pending"
	Refused Outcome = "refused"
	// Unapproved: pending an approver's decision, which the hub did not
	// (or may not) make. The decision is a change to the request, so the
	// watch brings the request back; nothing is retried meanwhile.
	Unapproved Outcome = "unapproved"
)

// Controller signs the requests of one member cluster.
type Controller struct {
	Cluster *kube.Cluster
	Signer  Signer
	// Log; nil discards.
	Log *slog.Logger
	// Now is the clock of conditions; nil is time.Now.
	Now func() time.Time
	// Approve makes the hub the approver of its own issuer's requests, for
	// clusters whose cert-manager runs without its default approver: a
	// request neither approved nor denied that the signing policy admits
	// (exactly the cluster's intermediate) is approved, then signed. It
	// never overrides a decision, and never denies: what the policy does
	// not admit is refused (Failed) with the policy's reason instead.
	Approve bool
}

func (c *Controller) now() metav1.Time {
	if c.Now != nil {
		return metav1.NewTime(c.Now())
	}
	return metav1.Now()
}

func (c *Controller) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// ours: the request names the group, whatever kind or namespace, so that
// a request the policy refuses still gets a reason.
func ours(cr *cmapi.CertificateRequest) bool { return cr.Spec.IssuerRef.Group == v1alpha1.Group }

// finished: a final Ready condition is never revisited; cert-manager
// creates a new request to retry.
func finished(cr *cmapi.CertificateRequest) bool {
	for _, cond := range cr.Status.Conditions {
		if cond.Type == cmapi.CertificateRequestConditionInvalidRequest && cond.Status == cmmeta.ConditionTrue {
			return true
		}
		if cond.Type != cmapi.CertificateRequestConditionReady {
			continue
		}
		switch {
		case cond.Status == cmmeta.ConditionTrue:
			return true
		case cond.Reason == cmapi.CertificateRequestReasonFailed, cond.Reason == cmapi.CertificateRequestReasonDenied:
			return true
		}
	}
	return false
}

func readyCondition(cr *cmapi.CertificateRequest) *cmapi.CertificateRequestCondition {
	for i, cond := range cr.Status.Conditions {
		if cond.Type == cmapi.CertificateRequestConditionReady {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}

// Reconcile signs or refuses one request and records why on it.
func (c *Controller) Reconcile(ctx context.Context, cr *cmapi.CertificateRequest) (Outcome, error) {
	if !ours(cr) || finished(cr) || c.Cluster.DryRun {
		return Skipped, nil
	}
	where := fmt.Sprintf("%s: CertificateRequest %s/%s", c.Cluster.Name, cr.Namespace, cr.Name)
	// The copy in hand (an informer's) may predate this controller's own
	// last writes: its approval's event comes back before its signature's,
	// and a stale copy would be signed twice, each time with a new
	// certificate. The request as the API server has it decides.
	u, err := c.Cluster.Dynamic.Resource(certificateRequests).Namespace(cr.Namespace).Get(ctx, cr.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Skipped, nil
	case err != nil:
		return Pending, fmt.Errorf("%s: read: %w", where, err)
	}
	if cr, err = decode(u); err != nil {
		return Pending, fmt.Errorf("%s: %w", c.Cluster.Name, err)
	}
	if finished(cr) {
		return Skipped, nil
	}
	var mayNot string // why the hub may not approve, when it may not
	if c.Approve && !decided(cr) {
		if _, err := c.Signer.Admit(cr); err == nil {
			if mayNot, err = c.approve(ctx, cr); err != nil {
				return Pending, fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	bundle, err := c.Signer.Sign(ctx, cr)
	status := map[string]any{}
	cond := map[string]any{"type": string(cmapi.CertificateRequestConditionReady)}
	var out Outcome
	var pending *PendingError
	var permanent *PermanentError
	switch {
	case err == nil:
		out = Issued
		cond["status"], cond["reason"], cond["message"] = string(cmmeta.ConditionTrue), cmapi.CertificateRequestReasonIssued, "Intermediate signed by the flotilla hub"
		status["certificate"] = bundle.ChainPEM
		status["ca"] = bundle.CAPEM
	case errors.As(err, &permanent):
		out = Refused
		cond["status"], cond["reason"], cond["message"] = string(cmmeta.ConditionFalse), permanent.CMReason, "Refused by the flotilla hub: "+permanent.Reason
		status["failureTime"] = c.now().UTC().Format(time.RFC3339)
	default:
		// Pending, or a signing failure that may pass: retried.
		out = Pending
		msg := err.Error()
		if errors.As(err, &pending) {
			msg = pending.Reason
		}
		if !decided(cr) {
			out = Unapproved
			if mayNot != "" {
				msg += "; " + mayNot
			}
		}
		cond["status"], cond["reason"], cond["message"] = string(cmmeta.ConditionFalse), cmapi.CertificateRequestReasonPending, "Waiting for the flotilla hub: "+msg
		if prev := readyCondition(cr); prev != nil && prev.Reason == cmapi.CertificateRequestReasonPending && prev.Message == cond["message"] {
			return out, nil // nothing new to say
		}
	}
	cond["lastTransitionTime"] = c.now().UTC().Format(time.RFC3339)
	status["conditions"] = []any{cond}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateRequestKind,
		"metadata":   map[string]any{"name": cr.Name, "namespace": cr.Namespace},
		"status":     status,
	}}
	if b, ok := status["certificate"].([]byte); ok {
		// Unstructured content is JSON: []byte travels base64-encoded, as the API expects.
		status["certificate"] = b64(b)
		status["ca"] = b64(status["ca"].([]byte))
	}
	_, werr := c.Cluster.Dynamic.Resource(certificateRequests).Namespace(cr.Namespace).ApplyStatus(ctx, cr.Name, obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if werr != nil {
		return out, fmt.Errorf("%s: write status: %w", where, werr)
	}
	c.log().Info("certificate request", "cluster", c.Cluster.Name, "request", cr.Namespace+"/"+cr.Name, "outcome", string(out), "reason", cond["message"])
	return out, nil
}

// approve writes the Approved condition on cr, and on the copy in hand so
// that signing follows at once. It approves exactly the request as read:
// another approver's decision since then wins, and is read back. When the
// hub's identity may not approve (RBAC, or cert-manager's webhook checking
// `approve` on the signer), it says why and leaves the request to the
// cluster's approver.
func (c *Controller) approve(ctx context.Context, cr *cmapi.CertificateRequest) (mayNot string, err error) {
	const msg = "Approved by the flotilla hub: the cluster's intermediate, as the mesh issuer's policy admits"
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateRequestKind,
		// The resourceVersion makes the apply conditional: a Denied (or
		// Approved) written since the read is a conflict, never a second
		// decision beside it, with or without a webhook to refuse one.
		"metadata": map[string]any{"name": cr.Name, "namespace": cr.Namespace, "resourceVersion": cr.ResourceVersion},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": string(cmapi.CertificateRequestConditionApproved), "status": string(cmmeta.ConditionTrue),
			"reason": ApprovedReason, "message": msg, "lastTransitionTime": c.now().UTC().Format(time.RFC3339),
		}}},
	}}
	ri := c.Cluster.Dynamic.Resource(certificateRequests).Namespace(cr.Namespace)
	u, err := ri.ApplyStatus(ctx, cr.Name, obj, metav1.ApplyOptions{FieldManager: ApproverFieldManager})
	switch {
	case apierrors.IsConflict(err), apierrors.IsForbidden(err):
		forbidden := err
		if u, err = ri.Get(ctx, cr.Name, metav1.GetOptions{}); err != nil {
			return "", fmt.Errorf("read after a refused approval: %w", err)
		}
		fresh, err := decode(u)
		if err != nil {
			return "", err
		}
		cr.Status.Conditions = fresh.Status.Conditions
		if decided(fresh) || !apierrors.IsForbidden(forbidden) {
			// Another approver decided meanwhile (a webhook may refuse a
			// second decision as Forbidden): theirs stands. Or the request
			// changed otherwise: approved on the next reconcile.
			c.log().Info("certificate request: another approver decided first", "cluster", c.Cluster.Name, "request", cr.Namespace+"/"+cr.Name)
			return "", nil
		}
		mayNot = fmt.Sprintf("the hub may not approve it (its identity needs verb approve on signers.cert-manager.io %s): %v", SignerName(cr), forbidden)
		c.log().Warn("certificate request: the hub may not approve; waiting for the cluster's approver", "cluster", c.Cluster.Name, "request", cr.Namespace+"/"+cr.Name, "signer", SignerName(cr), "error", forbidden.Error())
		return mayNot, nil
	case err != nil:
		return "", fmt.Errorf("approve: %w", err)
	}
	c.log().Info("certificate request approved", "cluster", c.Cluster.Name, "request", cr.Namespace+"/"+cr.Name)
	fresh, err := decode(u)
	if err != nil {
		return "", err
	}
	cr.Status.Conditions = fresh.Status.Conditions
	return "", nil
}

// SignerName is cert-manager's name of the signer of cr's MeshIssuer, the
// resource name of the `approve` verb on `signers` (group cert-manager.io)
// that its webhook checks when a decision is written:
// meshissuers.issuer.flotilla.dev/<namespace>.<name>.
func SignerName(cr *cmapi.CertificateRequest) string {
	return v1alpha1.MeshIssuerResource + "." + v1alpha1.Group + "/" + cr.Namespace + "." + cr.Spec.IssuerRef.Name
}

// SignPending reconciles every request of the group once: what apply runs
// so that the CLI without a hub signs too.
func (c *Controller) SignPending(ctx context.Context) (map[Outcome]int, error) {
	list, err := c.Cluster.Dynamic.Resource(certificateRequests).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: list CertificateRequests: %w", c.Cluster.Name, err)
	}
	counts := map[Outcome]int{}
	var errs []error
	for i := range list.Items {
		cr, err := decode(&list.Items[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Cluster.Name, err))
			continue
		}
		out, err := c.Reconcile(ctx, cr)
		counts[out]++
		errs = append(errs, err)
	}
	return counts, errors.Join(errs...)
}

func decode(u *unstructured.Unstructured) (*cmapi.CertificateRequest, error) {
	cr := &cmapi.CertificateRequest{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cr); err != nil {
		return nil, fmt.Errorf("decode CertificateRequest %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return cr, nil
}

// MarkIssuer writes the MeshIssuer's Ready condition from Signer.Check.
func (c *Controller) MarkIssuer(ctx context.Context, name string) error {
	if c.Cluster.DryRun {
		return nil
	}
	ri := c.Cluster.Dynamic.Resource(v1alpha1.MeshIssuerGVR).Namespace(c.Signer.Namespace)
	u, err := ri.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("%s: read MeshIssuer %s/%s: %w", c.Cluster.Name, c.Signer.Namespace, name, err)
	}
	iss := &v1alpha1.MeshIssuer{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, iss); err != nil {
		return fmt.Errorf("%s: decode MeshIssuer %s/%s: %w", c.Cluster.Name, c.Signer.Namespace, name, err)
	}
	status, reason, msg := metav1.ConditionTrue, "Ready", "The flotilla hub signs this cluster's intermediate"
	if err := c.Signer.Check(ctx, iss); err != nil {
		status, reason, msg = metav1.ConditionFalse, "NotReady", err.Error()
	}
	for _, cond := range iss.Status.Conditions {
		if cond.Type == v1alpha1.ConditionReady && cond.Status == status && cond.Message == msg && cond.ObservedGeneration == iss.Generation {
			return nil
		}
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(),
		"kind":       v1alpha1.MeshIssuerKind,
		"metadata":   map[string]any{"name": name, "namespace": c.Signer.Namespace},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": v1alpha1.ConditionReady, "status": string(status), "reason": reason, "message": msg,
			"lastTransitionTime": c.now().UTC().Format(time.RFC3339), "observedGeneration": iss.Generation,
		}}},
	}}
	if _, err := ri.ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("%s: write MeshIssuer %s/%s status: %w", c.Cluster.Name, c.Signer.Namespace, name, err)
	}
	return nil
}

// Run watches the cluster's CertificateRequests until ctx ends and
// reconciles each one of the group as it appears or changes (an approval
// is a change). A request that stays pending is retried with backoff; a
// hub that is down simply leaves requests pending until it is back.
func (c *Controller) Run(ctx context.Context) error {
	return c.Cluster.Watch(ctx, certificateRequests, "", c.handle)
}

// handle reconciles one CertificateRequest the watch saw; it asks to see it
// again while it is pending or the hub failed it.
func (c *Controller) handle(ctx context.Context, u *unstructured.Unstructured) (retry bool) {
	cr, err := decode(u)
	if err != nil {
		c.log().Warn("certificate request", "cluster", c.Cluster.Name, "error", err.Error())
		return false
	}
	out, err := c.Reconcile(ctx, cr)
	switch {
	case err != nil && !apierrors.IsNotFound(err):
		c.log().Warn("certificate request", "cluster", c.Cluster.Name, "error", err.Error())
		return true
	case out == Pending:
		return true
	}
	// Issued, refused, or Unapproved: an approval to come is an update
	// the watch delivers (and its resync revisits a refused approval).
	return false
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
