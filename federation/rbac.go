package federation

import (
	"context"
	"errors"
	"fmt"
	"slices"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

const (
	// ReaderServiceAccount is the account istiod in other clusters reads this
	// one as. It is flotilla's own, not Istio's istio-reader-service-account:
	// Istio's charts create that one (and its ClusterRole and binding) in a
	// Helm release, and Helm refuses to adopt objects another writer made.
	ReaderServiceAccount = "flotilla-reader"
	// DefaultIstiodServiceAccount is the account an external istiod uses on
	// its config cluster when none is configured (istioctl's default for
	// --type=config; OpenShift Service Mesh names it istiod-<revision>).
	DefaultIstiodServiceAccount = "istiod"

	// ManagedByLabel marks every object federation writes, so that pruning
	// and removal touch only its own.
	ManagedByLabel = kube.ManagedByLabel
	ManagedByValue = kube.ManagedBy
)

// ReaderClusterRoleName is the name of the reader's ClusterRole and its binding
// for a control plane in namespace ns. Its rules are those of Istio's
// istio-reader-clusterrole-<ns> (ReaderRules); the name is flotilla's own.
func ReaderClusterRoleName(ns string) string { return "flotilla-reader-" + ns }

// Names flotilla gave its reader before it had names of its own: Istio's.
// Objects of these names that carry flotilla's managed-by label are
// flotilla's leftovers, which block Istio's Helm releases; any other is
// Istio's own and is never touched.
const legacyReaderServiceAccount = "istio-reader-service-account"

func legacyReaderClusterRoleName(ns string) string { return "istio-reader-clusterrole-" + ns }

// ConfigClusterRoleName names the ClusterRole flotilla grants an external
// istiod on its config cluster. It differs from the chart's
// istiod-clusterrole-<rev>-<ns> so that flotilla and a later Istio install
// do not fight over one object.
func ConfigClusterRoleName(ns string) string { return "flotilla-istiod-config-" + ns }

// ConfigRoleName names the namespaced Role of that external istiod.
const ConfigRoleName = "flotilla-istiod-config"

var (
	verbsRead = []string{"get", "list", "watch"}
	istioAPI  = []string{
		"config.istio.io", "security.istio.io", "networking.istio.io", "authentication.istio.io",
		"rbac.istio.io", "telemetry.istio.io", "extensions.istio.io",
	}
)

func rule(groups, resources, verbs []string) *rbacv1ac.PolicyRuleApplyConfiguration {
	return rbacv1ac.PolicyRule().WithAPIGroups(groups...).WithResources(resources...).WithVerbs(verbs...)
}

// ReaderRules mirrors Istio's istio-reader-clusterrole (istio-discovery chart,
// reader-clusterrole.yaml). writer adds the rules the chart adds when
// istiodRemote.enabled (a remote or data-plane cluster): the istiod that
// serves it writes istio-ca-root-cert ConfigMaps and webhook CA bundles there.
// The MCS serviceexports create/delete rule is left out: Istio uses it only
// with MCS enabled, and without it the reader can delete nothing.
func ReaderRules(writer bool) []*rbacv1ac.PolicyRuleApplyConfiguration {
	rules := []*rbacv1ac.PolicyRuleApplyConfiguration{
		rule(istioAPI, []string{"*"}, verbsRead),
		rule([]string{""}, []string{"endpoints", "pods", "services", "nodes", "replicationcontrollers", "namespaces", "secrets", "configmaps"}, verbsRead),
		rule([]string{"networking.istio.io"}, []string{"workloadentries"}, verbsRead),
		rule([]string{"networking.x-k8s.io", "gateway.networking.k8s.io"}, []string{"gateways"}, verbsRead),
		rule([]string{"apiextensions.k8s.io"}, []string{"customresourcedefinitions"}, verbsRead),
		rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, verbsRead),
		rule([]string{"multicluster.x-k8s.io"}, []string{"serviceimports"}, verbsRead),
		rule([]string{"apps"}, []string{"replicasets"}, verbsRead),
		rule([]string{"authentication.k8s.io"}, []string{"tokenreviews"}, []string{"create"}),
		rule([]string{"authorization.k8s.io"}, []string{"subjectaccessreviews"}, []string{"create"}),
	}
	if writer {
		rules = append(rules,
			rule([]string{""}, []string{"configmaps"}, []string{"create", "get", "list", "watch", "update"}),
			rule([]string{"admissionregistration.k8s.io"}, []string{"mutatingwebhookconfigurations"}, []string{"get", "list", "watch", "update", "patch"}),
			rule([]string{"admissionregistration.k8s.io"}, []string{"validatingwebhookconfigurations"}, []string{"get", "list", "watch", "update"}),
		)
	}
	return rules
}

// ConfigRules mirrors the cluster-wide rules of Istio's istiod-clusterrole
// that an external istiod needs on its config cluster: it reads all mesh
// config and discovery objects there, writes webhooks, status and root-cert
// ConfigMaps, and reviews tokens. With them go the rules of the chart's
// istiod-gateway-controller ClusterRole: where the Gateway API CRDs are
// installed istiod runs its gateway deployment controller against the
// config cluster, and without them its discovery never turns ready (real
// istiod: "deployments.apps is forbidden"), so its injector never answers.
// CSR signing and MCS rules are left out.
func ConfigRules() []*rbacv1ac.PolicyRuleApplyConfiguration {
	all := []string{"get", "list", "watch", "update", "patch", "create", "delete"}
	return []*rbacv1ac.PolicyRuleApplyConfiguration{
		rule([]string{"admissionregistration.k8s.io"}, []string{"mutatingwebhookconfigurations"}, []string{"get", "list", "watch", "update", "patch"}),
		rule([]string{"admissionregistration.k8s.io"}, []string{"validatingwebhookconfigurations"}, []string{"get", "list", "watch", "update"}),
		rule(istioAPI, []string{"*"}, verbsRead),
		rule([]string{"networking.istio.io"}, []string{"workloadentries", "workloadentries/status", "serviceentries/status"}, all),
		rule([]string{"security.istio.io"}, []string{"authorizationpolicies/status"}, all),
		rule([]string{""}, []string{"services/status"}, all),
		rule([]string{"apiextensions.k8s.io"}, []string{"customresourcedefinitions"}, verbsRead),
		rule([]string{""}, []string{"pods", "nodes", "services", "namespaces", "endpoints"}, verbsRead),
		rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, verbsRead),
		rule([]string{"networking.k8s.io"}, []string{"ingresses", "ingressclasses"}, verbsRead),
		rule([]string{"networking.k8s.io"}, []string{"ingresses/status"}, []string{"*"}),
		rule([]string{""}, []string{"configmaps"}, []string{"create", "get", "list", "watch", "update"}),
		rule([]string{"authentication.k8s.io"}, []string{"tokenreviews"}, []string{"create"}),
		rule([]string{"authorization.k8s.io"}, []string{"subjectaccessreviews"}, []string{"create"}),
		rule([]string{"gateway.networking.k8s.io", "gateway.networking.x-k8s.io"}, []string{"*"}, verbsRead),
		rule([]string{"gateway.networking.k8s.io"}, []string{
			"backendtlspolicies/status", "gatewayclasses/status", "gateways/status", "grpcroutes/status",
			"httproutes/status", "referencegrants/status", "tcproutes/status", "tlsroutes/status", "udproutes/status",
		}, []string{"update", "patch"}),
		rule([]string{""}, []string{"secrets"}, verbsRead),
		rule([]string{"multicluster.x-k8s.io"}, []string{"serviceimports"}, verbsRead),
		// istiod-gateway-controller
		rule([]string{"apps"}, []string{"deployments"}, all),
		rule([]string{"autoscaling"}, []string{"horizontalpodautoscalers"}, all),
		rule([]string{"policy"}, []string{"poddisruptionbudgets"}, all),
		rule([]string{""}, []string{"services", "serviceaccounts"}, all),
	}
}

// configNamespaceRules mirrors the chart's istiod Role in its own namespace.
func configNamespaceRules() []*rbacv1ac.PolicyRuleApplyConfiguration {
	return []*rbacv1ac.PolicyRuleApplyConfiguration{
		rule([]string{"networking.istio.io"}, []string{"gateways"}, []string{"create"}),
		rule([]string{""}, []string{"secrets"}, []string{"create", "get", "watch", "list", "update", "delete"}),
		rule([]string{""}, []string{"configmaps"}, []string{"delete"}),
		rule([]string{"coordination.k8s.io"}, []string{"leases"}, []string{"get", "update", "patch", "create"}),
	}
}

// Account is a service account that a remote istiod authenticates as.
type Account struct {
	Namespace string
	Name      string
	// Config marks istiod's own account on a config cluster (a config link)
	// rather than the reader account.
	Config bool
	// Writer grants the reader the writes a serving istiod makes in a remote
	// or data-plane cluster (see ReaderRules).
	Writer bool
}

func (a Account) String() string { return "serviceaccount " + a.Namespace + "/" + a.Name }

// ApplyAccount creates (idempotently) the service account a and the RBAC it
// needs in cluster c, creating its namespace when missing.
func ApplyAccount(ctx context.Context, c *kube.Cluster, a Account) error {
	c = c.As(kube.ManagerFederation)
	ns, err := kube.EnsureNamespace(ctx, c, a.Namespace, kube.ManagedLabels())
	if err != nil {
		return err
	}
	if ns == nil {
		return nil // dry run into a namespace yet to be made
	}
	objs, err := accountObjects(a)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", c.Name, a, err)
	}
	for _, o := range objs {
		// Converge reads first: an unchanged account costs no write.
		if _, _, err := o.Converge(ctx, c); err != nil {
			return err
		}
	}
	if !a.Config {
		return removeLegacyReader(ctx, c, a.Namespace)
	}
	return nil
}

// accountObjects are the service account a and its RBAC, in apply order.
func accountObjects(a Account) ([]kube.Object, error) {
	role, rules := ReaderClusterRoleName(a.Namespace), ReaderRules(a.Writer)
	if a.Config {
		role, rules = ConfigClusterRoleName(a.Namespace), ConfigRules()
	}
	subject := rbacv1ac.Subject().WithKind("ServiceAccount").WithName(a.Name).WithNamespace(a.Namespace)
	var objs []kube.Object
	var errs []error
	add := func(o kube.Object, err error) {
		objs = append(objs, o)
		errs = append(errs, err)
	}
	add(kube.Typed(corev1ac.ServiceAccount(a.Name, a.Namespace).WithLabels(kube.ManagedLabels()),
		func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceAccountApplyConfiguration) (metav1.Object, error) {
			return c.Kube.CoreV1().ServiceAccounts(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
		}))
	add(kube.Typed(rbacv1ac.ClusterRole(role).WithLabels(kube.ManagedLabels()).WithRules(rules...),
		func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.ClusterRoleApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().ClusterRoles().Apply(ctx, ac, c.ApplyOptions())
		}))
	add(kube.Typed(rbacv1ac.ClusterRoleBinding(role).WithLabels(kube.ManagedLabels()).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(role)).
		WithSubjects(subject),
		func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.ClusterRoleBindingApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().ClusterRoleBindings().Apply(ctx, ac, c.ApplyOptions())
		}))
	if a.Config {
		add(kube.Typed(rbacv1ac.Role(ConfigRoleName, a.Namespace).WithLabels(kube.ManagedLabels()).WithRules(configNamespaceRules()...),
			func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleApplyConfiguration) (metav1.Object, error) {
				return c.Kube.RbacV1().Roles(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			}))
		add(kube.Typed(rbacv1ac.RoleBinding(ConfigRoleName, a.Namespace).WithLabels(kube.ManagedLabels()).
			WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(ConfigRoleName)).
			WithSubjects(subject),
			func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleBindingApplyConfiguration) (metav1.Object, error) {
				return c.Kube.RbacV1().RoleBindings(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			}))
	}
	return objs, errors.Join(errs...)
}

// DeleteAccount revokes a: deleting the service account invalidates every
// token issued for it, and its legacy token secret goes with it. The RBAC
// objects flotilla made for it are deleted too. Missing objects are fine.
func DeleteAccount(ctx context.Context, c *kube.Cluster, a Account) error {
	del := func(what string, err error) error {
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("%s: delete %s: %w", c.Name, what, err)
		}
		return nil
	}
	opts := c.DeleteOptions()
	if err := del("secret "+a.Namespace+"/"+LegacyTokenSecretName(a.Name),
		c.Kube.CoreV1().Secrets(a.Namespace).Delete(ctx, LegacyTokenSecretName(a.Name), opts)); err != nil {
		return err
	}
	if err := del(a.String(), c.Kube.CoreV1().ServiceAccounts(a.Namespace).Delete(ctx, a.Name, opts)); err != nil {
		return err
	}
	role := ReaderClusterRoleName(a.Namespace)
	if a.Config {
		role = ConfigClusterRoleName(a.Namespace)
		if err := del("rolebinding "+ConfigRoleName, c.Kube.RbacV1().RoleBindings(a.Namespace).Delete(ctx, ConfigRoleName, opts)); err != nil {
			return err
		}
		if err := del("role "+ConfigRoleName, c.Kube.RbacV1().Roles(a.Namespace).Delete(ctx, ConfigRoleName, opts)); err != nil {
			return err
		}
	}
	if err := del("clusterrolebinding "+role, c.Kube.RbacV1().ClusterRoleBindings().Delete(ctx, role, opts)); err != nil {
		return err
	}
	if err := del("clusterrole "+role, c.Kube.RbacV1().ClusterRoles().Delete(ctx, role, opts)); err != nil {
		return err
	}
	if !a.Config {
		return removeLegacyReader(ctx, c, a.Namespace)
	}
	return nil
}

// discoveryRead is one resource whose informer istiod's registry of a
// remote cluster needs filled before it reports the cluster synced.
type discoveryRead struct{ group, resource string }

// discoveryReads are those resources: without list and watch on any of them
// the remote cluster never syncs (istiod's clusterz: syncing, then timeout).
func discoveryReads() []discoveryRead {
	return []discoveryRead{{"", "namespaces"}, {"", "nodes"}, {"", "pods"}, {"", "services"}, {"discovery.k8s.io", "endpointslices"}}
}

// MissingDiscoveryReads names the discovery reads (list and watch) that
// rules, a rules review of a remote secret's identity, do not grant, as
// "list endpointslices.discovery.k8s.io".
func MissingDiscoveryReads(rules []authorizationv1.ResourceRule) []string {
	var missing []string
	for _, r := range discoveryReads() {
		for _, verb := range []string{"list", "watch"} {
			if !grants(rules, r, verb) {
				name := r.resource
				if r.group != "" {
					name += "." + r.group
				}
				missing = append(missing, verb+" "+name)
			}
		}
	}
	return missing
}

func grants(rules []authorizationv1.ResourceRule, r discoveryRead, verb string) bool {
	for _, rule := range rules {
		if matches(rule.APIGroups, r.group) && matches(rule.Resources, r.resource) && matches(rule.Verbs, verb) {
			return true
		}
	}
	return false
}

func matches(set []string, v string) bool {
	return slices.Contains(set, v) || slices.Contains(set, "*")
}
