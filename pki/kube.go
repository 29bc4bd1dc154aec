package pki

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// SecretName is the Secret istiod loads its plug-in CA from.
const SecretName = "cacerts"

// ManagedByLabel marks the cacerts flotilla wrote (or adopted); without it
// a cacerts is foreign and never overwritten silently.
const (
	ManagedByLabel = kube.ManagedByLabel
	ManagedByValue = kube.ManagedBy
)

// ConflictPolicy says what to do with a cacerts flotilla did not write, or
// one that chains to another root.
type ConflictPolicy int

const (
	// Refuse stops with a *ConflictError and leaves the Secret intact.
	Refuse ConflictPolicy = iota
	// Replace overwrites it with flotilla's material.
	Replace
	// Adopt takes over an existing cacerts whose intermediate chains to the
	// mesh's root: it is labelled and its material kept.
	Adopt
)

func (p ConflictPolicy) String() string {
	switch p {
	case Refuse:
		return "refuse"
	case Replace:
		return "replace"
	case Adopt:
		return "adopt"
	}
	return fmt.Sprintf("ConflictPolicy(%d)", int(p))
}

// WriteAction is what WriteCACerts did.
type WriteAction string

const (
	Unchanged WriteAction = "unchanged" // exact content already there: no write
	Created   WriteAction = "created"
	Updated   WriteAction = "updated"  // flotilla's own cacerts, new content (rotation)
	Replaced  WriteAction = "replaced" // a foreign cacerts, overwritten under Replace
	Adopted   WriteAction = "adopted"  // a foreign cacerts, labelled and kept under Adopt
)

// WriteResult reports one WriteCACerts.
type WriteResult struct {
	Action          WriteAction
	ResourceVersion string
	// Adopted is the intermediate found in the cluster (Adopt only): the
	// caller records it as the cluster's intermediate instead of the one
	// it offered.
	Adopted *Intermediate
}

// ConflictError is a cacerts flotilla will not overwrite without being told.
type ConflictError struct {
	Cluster, Namespace, Name string
	// Reason is "was not written by flotilla" or "chains to another root".
	Reason string
	// RootFingerprint is the first root in the Secret's root-cert.pem.
	RootFingerprint string
	Hint            string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s: secret %s/%s %s (root fingerprint %s): refusing to overwrite; %s",
		e.Cluster, e.Namespace, e.Name, e.Reason, e.RootFingerprint, e.Hint)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// WriteCACerts writes cc as the Secret cacerts (Opaque, labelled managed by
// flotilla) in namespace on c, through server-side apply, creating the
// namespace if needed. Exactly the same content already there means no
// write at all. A foreign cacerts, or one chaining to another root, is
// handled by policy.
func WriteCACerts(ctx context.Context, c *kube.Cluster, namespace string, cc CACerts, policy ConflictPolicy) (WriteResult, error) {
	c = c.As(kube.ManagerPKI)
	ref := fmt.Sprintf("%s: secret %s/%s", c.Name, namespace, SecretName)
	if err := ValidateNames(c.Name, namespace); err != nil {
		return WriteResult{}, fmt.Errorf("%s: %w", ref, err)
	}
	now := time.Now()
	if err := cc.Validate(now); err != nil {
		return WriteResult{}, fmt.Errorf("%s: refusing to write invalid cacerts: %w", ref, err)
	}
	trust, err := cc.Roots()
	if err != nil {
		return WriteResult{}, fmt.Errorf("%s: %w", ref, err)
	}

	cur, err := c.Kube.CoreV1().Secrets(namespace).Get(ctx, SecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := kube.EnsureNamespace(ctx, c, namespace, nil); err != nil {
			return WriteResult{}, err
		}
		if c.DryRun {
			if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				// A dry-run namespace does not persist, so the Secret
				// cannot be validated inside it.
				return WriteResult{Action: Created}, nil
			}
		}
		return applySecret(ctx, c, namespace, cc.SecretData(), Created)
	case err != nil:
		return WriteResult{}, fmt.Errorf("%s: read: %w", ref, err)
	}

	managed := cur.Labels[ManagedByLabel] == ManagedByValue
	existing, parseErr := ParseCACerts(cur.Data)
	ours := parseErr == nil && issuedBy(existing, trust)
	exact := len(cur.Data) == len(cc.SecretData()) && cur.Type == corev1.SecretTypeOpaque && parseErr == nil && existing.Equal(cc)

	if managed && ours {
		if exact && c.Owns(cur) {
			return WriteResult{Action: Unchanged, ResourceVersion: cur.ResourceVersion}, nil
		}
		if exact {
			// Written by a flotilla of one field manager: the same content,
			// applied to be owned by the PKI's manager and taken over.
			return applySecret(ctx, c, namespace, cc.SecretData(), Unchanged)
		}
		return replaceSecret(ctx, c, cur, namespace, cc.SecretData(), Updated)
	}

	conflict := &ConflictError{
		Cluster: c.Name, Namespace: namespace, Name: SecretName,
		RootFingerprint: secretRootFingerprint(cur.Data),
	}
	if managed {
		conflict.Reason = fmt.Sprintf("chains to another root than the mesh's %v", trust.Fingerprints())
		conflict.Hint = "replace it explicitly"
	} else {
		conflict.Reason = "was not written by flotilla"
		conflict.Hint = "adopt or replace it explicitly"
	}

	switch policy {
	case Replace:
		return replaceSecret(ctx, c, cur, namespace, cc.SecretData(), Replaced)
	case Adopt:
		if !ours {
			conflict.Hint = "cannot adopt a cacerts outside the mesh's root; replace it explicitly"
			if parseErr != nil {
				conflict.Hint = fmt.Sprintf("cannot adopt it (%v); replace it explicitly", parseErr)
			}
			return WriteResult{}, conflict
		}
		if err := existing.Validate(now); err != nil {
			return WriteResult{}, fmt.Errorf("%s: cannot adopt: %w", ref, err)
		}
		in, err := existing.Intermediate(c.Name, namespace)
		if err != nil {
			return WriteResult{}, fmt.Errorf("%s: adopt: %w", ref, err)
		}
		// Keep the material byte for byte; only the label (and field
		// ownership) changes.
		res, err := replaceSecret(ctx, c, cur, namespace, existing.SecretData(), Adopted)
		if err != nil {
			return WriteResult{}, err
		}
		res.Adopted = in
		return res, nil
	default:
		return WriteResult{}, conflict
	}
}

// issuedBy reports whether cc's intermediate was signed by a root of
// trust. Validity times are ignored on purpose: an expired intermediate of
// the mesh's own root is still flotilla's to renew, not a foreign one.
func issuedBy(cc CACerts, trust *Bundle) bool {
	cert, err := parseCert(cc.CACert)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(trust.Roots, func(r *x509.Certificate) bool { return cert.CheckSignatureFrom(r) == nil })
}

func secretRootFingerprint(data map[string][]byte) string {
	if len(data[RootCertFile]) == 0 {
		return "none: no " + RootCertFile
	}
	root, err := parseCert(data[RootCertFile])
	if err != nil {
		return "unknown: unparsable " + RootCertFile
	}
	return Fingerprint(root)
}

// replaceSecret applies data over cur. Server-side apply cannot change a
// Secret's immutable type nor drop keys another manager owns, so a
// Secret of another type or with extra keys is deleted (guarded by its
// resourceVersion) and created afresh.
func replaceSecret(ctx context.Context, c *kube.Cluster, cur *corev1.Secret, namespace string, data map[string][]byte, action WriteAction) (WriteResult, error) {
	extra := slices.ContainsFunc(slices.Collect(maps.Keys(cur.Data)), func(k string) bool { return !slices.Contains(CACertsFiles, k) && k != CRLFile })
	if cur.Type != corev1.SecretTypeOpaque || extra || len(cur.StringData) > 0 {
		opts := c.DeleteOptions()
		opts.Preconditions = &metav1.Preconditions{UID: &cur.UID, ResourceVersion: &cur.ResourceVersion}
		if err := c.Kube.CoreV1().Secrets(namespace).Delete(ctx, SecretName, opts); err != nil && !apierrors.IsNotFound(err) {
			return WriteResult{}, fmt.Errorf("%s: delete secret %s/%s before re-creating it: %w", c.Name, namespace, SecretName, err)
		}
		if c.DryRun {
			return WriteResult{Action: action, ResourceVersion: cur.ResourceVersion}, nil
		}
	}
	return applySecret(ctx, c, namespace, data, action)
}

func applySecret(ctx context.Context, c *kube.Cluster, namespace string, data map[string][]byte, action WriteAction) (WriteResult, error) {
	ac := corev1ac.Secret(SecretName, namespace).
		WithLabels(map[string]string{ManagedByLabel: ManagedByValue}).
		WithType(corev1.SecretTypeOpaque).
		WithData(data)
	out, err := c.Kube.CoreV1().Secrets(namespace).Apply(ctx, ac, c.ApplyOptions())
	if err != nil {
		// The apiserver's error never echoes Secret data.
		return WriteResult{}, fmt.Errorf("%s: write secret %s/%s: %w", c.Name, namespace, SecretName, err)
	}
	if err := c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("secrets"), out); err != nil {
		return WriteResult{}, err
	}
	return WriteResult{Action: action, ResourceVersion: out.ResourceVersion}, nil
}

// ClusterCACerts is the cacerts found in a cluster.
type ClusterCACerts struct {
	CACerts CACerts
	// Managed: labelled as written (or adopted) by flotilla.
	Managed         bool
	ResourceVersion string
}

// ReadCACerts returns the cacerts in namespace on c, or nil when there is
// none. A Secret lacking one of the four keys is an ErrInvalidCACerts error.
func ReadCACerts(ctx context.Context, c *kube.Cluster, namespace string) (*ClusterCACerts, error) {
	s, err := c.Kube.CoreV1().Secrets(namespace).Get(ctx, SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read secret %s/%s: %w", c.Name, namespace, SecretName, err)
	}
	cc, err := ParseCACerts(s.Data)
	if err != nil {
		return nil, fmt.Errorf("%s: secret %s/%s: %w", c.Name, namespace, SecretName, err)
	}
	return &ClusterCACerts{
		CACerts:         cc,
		Managed:         s.Labels[ManagedByLabel] == ManagedByValue,
		ResourceVersion: s.ResourceVersion,
	}, nil
}

// AsConflict returns the *ConflictError in err's chain, if any.
func AsConflict(err error) (*ConflictError, bool) {
	var ce *ConflictError
	ok := errors.As(err, &ce)
	return ce, ok
}
