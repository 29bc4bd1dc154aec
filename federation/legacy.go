package federation

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// removeLegacyReader deletes the reader objects an earlier flotilla made
// under Istio's names in namespace ns (service account, its token secret,
// ClusterRole and binding), so that Istio's charts can install their own.
// Only objects with flotilla's managed-by label go, each deleted with its
// UID as precondition; missing objects are fine.
func removeLegacyReader(ctx context.Context, c *kube.Cluster, ns string) error {
	type target struct {
		what string
		get  func() (metav1.Object, error)
		del  func(metav1.DeleteOptions) error
	}
	core, rbac := c.Kube.CoreV1(), c.Kube.RbacV1()
	role := legacyReaderClusterRoleName(ns)
	secret := LegacyTokenSecretName(legacyReaderServiceAccount)
	targets := []target{
		{"secret " + ns + "/" + secret,
			func() (metav1.Object, error) { return core.Secrets(ns).Get(ctx, secret, metav1.GetOptions{}) },
			func(o metav1.DeleteOptions) error { return core.Secrets(ns).Delete(ctx, secret, o) }},
		{"serviceaccount " + ns + "/" + legacyReaderServiceAccount,
			func() (metav1.Object, error) {
				return core.ServiceAccounts(ns).Get(ctx, legacyReaderServiceAccount, metav1.GetOptions{})
			},
			func(o metav1.DeleteOptions) error {
				return core.ServiceAccounts(ns).Delete(ctx, legacyReaderServiceAccount, o)
			}},
		{"clusterrolebinding " + role,
			func() (metav1.Object, error) { return rbac.ClusterRoleBindings().Get(ctx, role, metav1.GetOptions{}) },
			func(o metav1.DeleteOptions) error { return rbac.ClusterRoleBindings().Delete(ctx, role, o) }},
		{"clusterrole " + role,
			func() (metav1.Object, error) { return rbac.ClusterRoles().Get(ctx, role, metav1.GetOptions{}) },
			func(o metav1.DeleteOptions) error { return rbac.ClusterRoles().Delete(ctx, role, o) }},
	}
	for _, t := range targets {
		obj, err := t.get()
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", c.Name, t.what, err)
		}
		if obj.GetLabels()[ManagedByLabel] != ManagedByValue {
			continue // Istio's own
		}
		opts := c.DeleteOptions()
		uid := obj.GetUID()
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
		if err := t.del(opts); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("%s: delete flotilla's earlier %s: %w", c.Name, t.what, err)
		}
	}
	return nil
}
