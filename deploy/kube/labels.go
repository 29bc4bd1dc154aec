package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
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

// EnsureNamespace makes sure namespace ns exists and that c's manager owns
// labels on it (none: it only creates a missing namespace). Every
// subsystem writes under its own manager, so this apply takes no field
// away from the others (the network label and annotations of the control
// plane, federation's annotation). In a dry run that would create ns it
// returns nil without error: the namespace does not persist, so namespaced
// writes into it cannot be validated and the caller skips them.
func EnsureNamespace(ctx context.Context, c *Cluster, ns string, labels map[string]string) (*corev1.Namespace, error) {
	return ApplyNamespace(ctx, c, corev1ac.Namespace(ns).WithLabels(labels))
}

// ApplyNamespace applies ac as c's manager, unless the namespace holds
// ac's labels and annotations already and c's manager has applied it (or
// ac sets neither), in which case it writes nothing; a namespace
// FieldManager wrote is then taken over where that is due. Like
// EnsureNamespace, it returns nil in a dry run that would create it.
func ApplyNamespace(ctx context.Context, c *Cluster, ac *corev1ac.NamespaceApplyConfiguration) (*corev1.Namespace, error) {
	name := *ac.Name
	namespaces := c.Kube.CoreV1().Namespaces()
	live, err := namespaces.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if c.DryRun {
			return nil, nil
		}
	case err != nil:
		return nil, fmt.Errorf("%s: read namespace %s: %w", c.Name, name, err)
	case len(ac.Labels)+len(ac.Annotations) == 0,
		c.Owns(live) && holds(live.Labels, ac.Labels) && holds(live.Annotations, ac.Annotations):
		return live, c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("namespaces"), live)
	}
	got, err := namespaces.Apply(ctx, ac, c.ApplyOptions())
	if err != nil {
		return nil, fmt.Errorf("%s: apply namespace %s: %w", c.Name, name, err)
	}
	return got, c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("namespaces"), got)
}

// holds reports whether have has every key of want with its value.
func holds(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}
