package federation

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestLabLegacyReaderRemoved: the reader objects an earlier flotilla wrote
// under Istio's names go when the account is applied, so that Istio's
// charts can install theirs; objects of those names that are not flotilla's
// (Istio's own) stay.
func TestLabLegacyReaderRemoved(t *testing.T) {
	tests := []struct {
		name     string
		ns       string
		labels   map[string]string
		wantGone bool
	}{
		{name: "flotilla's leftovers", ns: "legacy-flotilla", labels: map[string]string{ManagedByLabel: ManagedByValue}, wantGone: true},
		{name: "Istio's own", ns: "legacy-istio", labels: map[string]string{"app.kubernetes.io/managed-by": "Helm"}, wantGone: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			cs := admin(t, "west")
			meta := func(name, ns string) metav1.ObjectMeta {
				return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: tc.labels}
			}
			role := legacyReaderClusterRoleName(tc.ns)
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tc.ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			if _, err := cs.CoreV1().ServiceAccounts(tc.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta(legacyReaderServiceAccount, tc.ns)}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: meta(role, "")}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: meta(role, ""),
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = cs.RbacV1().ClusterRoleBindings().Delete(ctx, role, metav1.DeleteOptions{})
				_ = cs.RbacV1().ClusterRoles().Delete(ctx, role, metav1.DeleteOptions{})
				_ = cs.CoreV1().Namespaces().Delete(ctx, tc.ns, metav1.DeleteOptions{})
			})
			kc, err := testLab.Get(t).Cluster("west").Connect()
			if err != nil {
				t.Fatal(err)
			}
			if err := ApplyAccount(ctx, kc, Account{Namespace: tc.ns, Name: ReaderServiceAccount}); err != nil {
				t.Fatal(err)
			}
			for what, err := range map[string]error{
				"serviceaccount":     get(cs.CoreV1().ServiceAccounts(tc.ns).Get(ctx, legacyReaderServiceAccount, metav1.GetOptions{})),
				"clusterrole":        get(cs.RbacV1().ClusterRoles().Get(ctx, role, metav1.GetOptions{})),
				"clusterrolebinding": get(cs.RbacV1().ClusterRoleBindings().Get(ctx, role, metav1.GetOptions{})),
			} {
				if gone := apierrors.IsNotFound(err); gone != tc.wantGone {
					t.Errorf("legacy %s gone = %v (err %v), want %v", what, gone, err, tc.wantGone)
				}
			}
			if _, err := cs.CoreV1().ServiceAccounts(tc.ns).Get(ctx, ReaderServiceAccount, metav1.GetOptions{}); err != nil {
				t.Errorf("flotilla's reader: %v", err)
			}
		})
	}
}

func get[T any](_ T, err error) error { return err }
