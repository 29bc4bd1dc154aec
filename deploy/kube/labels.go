package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ManagedByLabel marks every object flotilla writes, so that pruning,
// removal and conflict checks touch only flotilla's own. Every subsystem
// labels with these; the packages that export the names alias them.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "flotilla"
)

// ManagedLabels is a fresh map each time: callers may add to it.
func ManagedLabels() map[string]string { return map[string]string{ManagedByLabel: ManagedBy} }

// EnsureNamespace creates ns when it is missing, with labels, and returns
// it. It creates rather than applies: the namespace's applied fields
// (network label, annotations) belong to the control-plane rollout, and an
// apply under flotilla's one field manager holding only the name would take
// them away. In a dry run that would create ns it returns nil without
// error: the namespace does not persist, so namespaced writes into it
// cannot be validated and the caller skips them.
func EnsureNamespace(ctx context.Context, c *Cluster, ns string, labels map[string]string) (*corev1.Namespace, error) {
	got, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err == nil {
		return got, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%s: read namespace %s: %w", c.Name, ns, err)
	}
	created, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels},
	}, c.CreateOptions())
	if apierrors.IsAlreadyExists(err) {
		return c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("%s: create namespace %s: %w", c.Name, ns, err)
	}
	if c.DryRun {
		return nil, nil
	}
	return created, nil
}
