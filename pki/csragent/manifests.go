package csragent

import (
	"cmp"
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki/certmanager"
)

// Names of the csr-agent's objects in the control-plane namespace.
const (
	TLSSecret               = ServiceName + "-tls"
	TrustBundleName         = "flotilla-trust-bundle"
	csrAgentCertDir         = "/var/run/secrets/flotilla/tls"
	csrAgentTrustBundleDir  = "/var/run/secrets/flotilla/trust"
	csrAgentTrustBundleFile = "root-cert.pem"
)

// ManifestOptions configure the csr-agent's manifests for one cluster.
type ManifestOptions struct {
	// Cluster names the cluster in the agent's messages.
	Cluster string
	// Namespace is the control-plane namespace; "" is istio-system.
	Namespace string
	// Image runs `flotilla csr-agent`; required.
	Image string
	// TrustDomain; "" is cluster.local.
	TrustDomain string
	// TrustBundlePEM is the pinned root bundle (ConfigMap flotilla-trust-bundle).
	TrustBundlePEM []byte
	// Replicas; 0 is 2 (a signer outage stalls every proxy's rotation).
	Replicas int32
	// MaxLifetime caps workload certificates; 0 is the agent's default.
	MaxLifetime time.Duration
	// RootCertNamespaces get istio-ca-root-cert; empty is every namespace.
	RootCertNamespaces []string
}

// Objects are the objects that run the csr-agent in a cluster, in
// apply order: RBAC, the pinned trust bundle, its serving Certificate
// (issued by the cluster's workload issuer, so proxies verify it with the
// mesh root), Service and Deployment. cert-manager mode's objects
// (certmanager.Apply) must be in place first.
func Objects(o ManifestOptions) ([]kube.Object, error) {
	ns := cmp.Or(o.Namespace, deploy.DefaultNamespace)
	if o.Image == "" {
		return nil, errors.New("csr-agent: no image")
	}
	if len(o.TrustBundlePEM) == 0 {
		return nil, errors.New("csr-agent: no trust bundle")
	}
	replicas := o.Replicas
	if replicas == 0 {
		replicas = 2
	}
	labels := map[string]string{"app": ServiceName, kube.ManagedByLabel: kube.ManagedBy}
	sel := map[string]string{"app": ServiceName}
	var objs []kube.Object
	add := func(o kube.Object, err error) error {
		if err != nil {
			return err
		}
		objs = append(objs, o)
		return nil
	}

	sa := corev1ac.ServiceAccount(ServiceName, ns).WithLabels(labels)
	cr := rbacv1ac.ClusterRole(ServiceName+"-"+ns).WithLabels(labels).WithRules(
		rbacv1ac.PolicyRule().WithAPIGroups("authentication.k8s.io").WithResources("tokenreviews").WithVerbs("create"),
		rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("configmaps").WithVerbs("get", "list", "watch", "create", "patch"),
		rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("namespaces").WithVerbs("get", "list", "watch"),
		// The agent approves its own requests, for its own signer only
		// (cert-manager's webhook checks this verb on approval).
		rbacv1ac.PolicyRule().WithAPIGroups("cert-manager.io").WithResources("signers").WithVerbs("approve").
			WithResourceNames(SignerName(ns, certmanager.WorkloadIssuer())),
	)
	crb := rbacv1ac.ClusterRoleBinding(ServiceName + "-" + ns).WithLabels(labels).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(ServiceName + "-" + ns)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(ServiceName).WithNamespace(ns))
	role := rbacv1ac.Role(ServiceName, ns).WithLabels(labels).WithRules(
		// Server-side apply creates through patch.
		rbacv1ac.PolicyRule().WithAPIGroups("cert-manager.io").WithResources("certificaterequests").WithVerbs("create", "patch", "get", "list", "watch", "delete"),
		// Its Approved condition, on the requests it made.
		rbacv1ac.PolicyRule().WithAPIGroups("cert-manager.io").WithResources("certificaterequests/status").WithVerbs("patch"),
		rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("events").WithVerbs("create", "patch"),
	)
	rb := rbacv1ac.RoleBinding(ServiceName, ns).WithLabels(labels).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(ServiceName)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(ServiceName).WithNamespace(ns))
	bundle := corev1ac.ConfigMap(TrustBundleName, ns).WithLabels(labels).
		WithData(map[string]string{csrAgentTrustBundleFile: string(o.TrustBundlePEM)})
	svc := corev1ac.Service(ServiceName, ns).WithLabels(labels).WithSpec(corev1ac.ServiceSpec().
		WithSelector(sel).
		WithPorts(
			corev1ac.ServicePort().WithName("grpc").WithProtocol(corev1.ProtocolTCP).WithPort(DefaultServicePort).WithTargetPort(intstr.FromInt32(DefaultPort)),
			corev1ac.ServicePort().WithName("metrics").WithProtocol(corev1.ProtocolTCP).WithPort(DefaultMetricsPort).WithTargetPort(intstr.FromInt32(DefaultMetricsPort)),
		))

	for _, err := range []error{
		add(kube.Typed(sa, func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceAccountApplyConfiguration) (metav1.Object, error) {
			return c.Kube.CoreV1().ServiceAccounts(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(cr, func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.ClusterRoleApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().ClusterRoles().Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(crb, func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.ClusterRoleBindingApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().ClusterRoleBindings().Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(role, func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().Roles(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(rb, func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleBindingApplyConfiguration) (metav1.Object, error) {
			return c.Kube.RbacV1().RoleBindings(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(bundle, func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ConfigMapApplyConfiguration) (metav1.Object, error) {
			return c.Kube.CoreV1().ConfigMaps(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
	} {
		if err != nil {
			return nil, err
		}
	}
	objs = append(objs, kube.Custom(Certificate(ns)))
	// istiod's serving Certificate is written here, by the hub, not by the
	// agent: the agent's Role has no Certificate rights, so that nothing
	// that can reach it can ask cert-manager for a certificate of its choice.
	objs = append(objs, kube.Custom(IstiodCertificateObject(ns, o.TrustDomain, certmanager.WorkloadIssuerName)))
	for _, err := range []error{
		add(kube.Typed(svc, func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
			return c.Kube.CoreV1().Services(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
		add(kube.Typed(csrAgentDeployment(o, ns, replicas, labels, sel), func(ctx context.Context, c *kube.Cluster, ac *appsv1ac.DeploymentApplyConfiguration) (metav1.Object, error) {
			return c.Kube.AppsV1().Deployments(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
	} {
		if err != nil {
			return nil, err
		}
	}
	return objs, nil
}

// Certificate is the agent's serving Certificate: its Service
// names, signed by the cluster's workload issuer.
func Certificate(ns string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1",
		"kind":       "Certificate",
		"metadata": map[string]any{
			"name": ServiceName, "namespace": ns,
			"labels": map[string]any{"app": ServiceName, kube.ManagedByLabel: kube.ManagedBy},
		},
		"spec": map[string]any{
			"secretName":  TLSSecret,
			"duration":    "720h",
			"renewBefore": "240h",
			"dnsNames": []any{
				ServiceName + "." + ns + ".svc",
				ServiceName + "." + ns + ".svc.cluster.local",
			},
			"usages":     []any{"digital signature", "key encipherment", "server auth"},
			"privateKey": map[string]any{"algorithm": "ECDSA", "size": int64(256), "rotationPolicy": "Always", "encoding": "PKCS8"},
			"issuerRef":  map[string]any{"name": certmanager.WorkloadIssuerName, "kind": "Issuer", "group": "cert-manager.io"},
		},
	}}
}

// Args are the `flotilla csr-agent` flags the Deployment passes.
func Args(o ManifestOptions) []string {
	ns := cmp.Or(o.Namespace, deploy.DefaultNamespace)
	args := []string{
		"csr-agent",
		"--cluster-name=" + cmp.Or(o.Cluster, "in-cluster"),
		"--namespace=" + ns,
		"--trust-domain=" + cmp.Or(o.TrustDomain, DefaultTrustDomain),
		"--issuer-name=" + certmanager.WorkloadIssuerName,
		"--issuer-kind=Issuer",
		"--trust-bundle-file=" + csrAgentTrustBundleDir + "/" + csrAgentTrustBundleFile,
		"--tls-cert-file=" + csrAgentCertDir + "/tls.crt",
		"--tls-key-file=" + csrAgentCertDir + "/tls.key",
		"--listen=:" + strconv.Itoa(DefaultPort),
		"--metrics-listen=:" + strconv.Itoa(DefaultMetricsPort),
	}
	if o.MaxLifetime > 0 {
		args = append(args, "--max-lifetime="+o.MaxLifetime.String())
	}
	if len(o.RootCertNamespaces) > 0 {
		args = append(args, "--root-cert-namespaces="+strings.Join(o.RootCertNamespaces, ","))
	}
	return args
}

func csrAgentDeployment(o ManifestOptions, ns string, replicas int32, labels, sel map[string]string) *appsv1ac.DeploymentApplyConfiguration {
	return appsv1ac.Deployment(ServiceName, ns).WithLabels(labels).WithSpec(appsv1ac.DeploymentSpec().
		WithReplicas(replicas).
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(sel)).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(labels).
			WithSpec(corev1ac.PodSpec().
				WithServiceAccountName(ServiceName).
				WithSecurityContext(corev1ac.PodSecurityContext().WithRunAsNonRoot(true).
					WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
				WithContainers(corev1ac.Container().
					WithName("csr-agent").
					WithImage(o.Image).
					WithArgs(Args(o)...).
					WithPorts(
						corev1ac.ContainerPort().WithName("grpc").WithContainerPort(DefaultPort),
						corev1ac.ContainerPort().WithName("metrics").WithContainerPort(DefaultMetricsPort),
					).
					WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().
						WithPath("/healthz").WithPort(intstr.FromInt32(DefaultMetricsPort)))).
					WithSecurityContext(corev1ac.SecurityContext().
						WithAllowPrivilegeEscalation(false).WithReadOnlyRootFilesystem(true).
						WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
					WithVolumeMounts(
						corev1ac.VolumeMount().WithName("tls").WithMountPath(csrAgentCertDir).WithReadOnly(true),
						corev1ac.VolumeMount().WithName("trust").WithMountPath(csrAgentTrustBundleDir).WithReadOnly(true),
					)).
				WithVolumes(
					corev1ac.Volume().WithName("tls").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(TLSSecret)),
					corev1ac.Volume().WithName("trust").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(TrustBundleName)),
				))))
}
