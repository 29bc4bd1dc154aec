// Package gateways builds the gateways a multi-cluster mesh routes through:
// the east-west gateway of each cluster (cross-network traffic on 15443,
// istiod exposure on 15012/15017), the ingress gateway in front of an external
// control plane, the Istio Gateway and VirtualService resources that configure
// them, and the wait for their external addresses. It also owns the
// per-cluster rollout (mesh.go: Plan, ApplyMesh, Render), because gateways
// sit in the middle of it: deploy's plan says which gateway each cluster
// runs, the gateways must have addresses before the remotes' and data
// planes' Istio resources can name them.
//
// Gateway pods use Istio's gateway injection: the Deployment names the
// `gateway` injection template and image `auto`, and istiod fills in the proxy,
// so the gateway always runs the control plane's proxy version.
package gateways

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Labels and annotations Istio reads on gateways and namespaces, defined
// in deploy with the namespace that carries them.
const (
	NetworkLabel                   = deploy.NetworkLabel
	ControlPlaneClustersAnnotation = deploy.ControlPlaneClustersAnnotation
	ManagedByLabel                 = kube.ManagedByLabel
	ManagedBy                      = kube.ManagedBy
	// RevisionLabel on a pod or namespace selects the revision whose
	// injection webhook injects it.
	RevisionLabel = "istio.io/rev"
)

// Names of the two gateways flotilla deploys.
const (
	EastWestName = "istio-eastwestgateway"
	IngressName  = "istio-ingressgateway"
	// EastWestSelector and IngressSelector are the values of the `istio`
	// label that Gateway resources select.
	EastWestSelector = "eastwestgateway"
	IngressSelector  = "ingressgateway"
)

// Service port names and numbers of the gateways.
const (
	PortStatus  = 15021             // status-port: readiness
	PortTLS     = 15443             // tls: cross-network mTLS, AUTO_PASSTHROUGH
	PortIstiod  = deploy.PortIstiod // tls-istiod: xDS and CA
	PortWebhook = 15017             // tls-webhook: injection and validation webhooks
)

// Exposure is how a gateway Service is reached from other clusters; the
// mesh plan (deploy) carries it per cluster.
type Exposure = deploy.Exposure

// Port is one Service port of a gateway.
type Port struct {
	Name   string
	Number int32
}

// Gateway describes one gateway deployment. Build it with EastWest or
// ControlPlaneIngress.
type Gateway struct {
	// Name of the ServiceAccount, Deployment, Service, PDB and HPA.
	Name      string
	Namespace string
	// Selector is the value of the `istio` label Gateway resources select.
	Selector string
	// Network puts the gateway on a network; "" for the external control
	// plane's ingress, which carries no mesh traffic.
	Network string
	// Revision is the control-plane revision that injects the gateway's
	// pods; "" for the default revision. A revision other than the default
	// renders only webhooks that select istio.io/rev=<revision>, and Sail
	// drops values.defaultRevision, so the pods must name it.
	Revision string
	// Ambient: the gateway is a Gateway API Gateway of class
	// istio-east-west (GatewayAPI), whose pods and Service istiod makes;
	// flotilla writes no workload of its own for it.
	Ambient  bool
	Ports    []Port
	Exposure Exposure
	// MinReplicas and MaxReplicas bound the HorizontalPodAutoscaler.
	MinReplicas, MaxReplicas int32
}

// EastWest is the east-west gateway of a cluster on network: cross-network
// traffic on 15443 and istiod exposure on 15012/15017.
func EastWest(namespace, network string, exp Exposure) Gateway {
	return Gateway{
		Name:      EastWestName,
		Namespace: namespace,
		Selector:  EastWestSelector,
		Network:   network,
		Ports: []Port{
			{"status-port", PortStatus},
			{"tls", PortTLS},
			{"tls-istiod", PortIstiod},
			{"tls-webhook", PortWebhook},
		},
		Exposure:    exp,
		MinReplicas: 1,
		MaxReplicas: 5,
	}
}

// ControlPlaneIngress is the ingress gateway in front of an external
// control plane (OpenShift Service Mesh 3 installation guide, chapter 8):
// data-plane proxies reach the external istiod through it on 15012 and the
// data-plane API server calls its webhooks on 15017.
func ControlPlaneIngress(namespace string, exp Exposure) Gateway {
	return Gateway{
		Name:      IngressName,
		Namespace: namespace,
		Selector:  IngressSelector,
		Ports: []Port{
			{"status-port", PortStatus},
			{"tls-xds", PortIstiod},
			{"tls-webhook", PortWebhook},
		},
		Exposure:    exp,
		MinReplicas: 1,
		MaxReplicas: 5,
	}
}

// ServiceAccountName is the gateway pods' service account.
func (g Gateway) ServiceAccountName() string { return g.Name + "-service-account" }

// SelectorLabels select the gateway's pods.
// The network is deliberately not among them: a Deployment's selector is
// immutable, and a cluster may move to another network.
func (g Gateway) SelectorLabels() map[string]string {
	return map[string]string{"istio": g.Selector, "app": g.Name}
}

// PodLabels are the gateway pods' labels: the selector, the network and the
// revision that injects them.
func (g Gateway) PodLabels() map[string]string {
	l := g.SelectorLabels()
	if g.Network != "" {
		l[NetworkLabel] = g.Network
	}
	if g.Revision != "" {
		l[RevisionLabel] = g.Revision
	}
	return l
}

// Labels are the labels of every object of the gateway.
func (g Gateway) Labels() map[string]string {
	l := g.PodLabels()
	delete(l, RevisionLabel) // injection reads it on pods only
	l[ManagedByLabel] = ManagedBy
	return l
}

// ServiceAccount is the gateway pods' identity.
func (g Gateway) ServiceAccount() *corev1ac.ServiceAccountApplyConfiguration {
	return corev1ac.ServiceAccount(g.ServiceAccountName(), g.Namespace).WithLabels(g.Labels())
}

// Deployment runs the gateway pods through Istio's gateway injection.
func (g Gateway) Deployment() *appsv1ac.DeploymentApplyConfiguration {
	podLabels := g.PodLabels()
	// The injection webhook only mutates pods that ask for it.
	podLabels["sidecar.istio.io/inject"] = "true"
	container := corev1ac.Container().
		WithName("istio-proxy").
		// "auto" is replaced by the injector with the control plane's proxy image.
		WithImage("auto").
		WithSecurityContext(corev1ac.SecurityContext().
			WithAllowPrivilegeEscalation(false).
			WithPrivileged(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")}).
			WithLimits(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")}))
	if g.Network != "" {
		// The gateway routes to endpoints of its own network only.
		container.WithEnv(corev1ac.EnvVar().WithName("ISTIO_META_REQUESTED_NETWORK_VIEW").WithValue(g.Network))
	}
	for _, p := range g.Ports {
		container.WithPorts(corev1ac.ContainerPort().WithContainerPort(p.Number).WithProtocol(corev1.ProtocolTCP))
	}
	container.WithPorts(corev1ac.ContainerPort().WithName("http-envoy-prom").WithContainerPort(15090).WithProtocol(corev1.ProtocolTCP))

	surge, unavailable := intstr.FromString("100%"), intstr.FromString("25%")
	return appsv1ac.Deployment(g.Name, g.Namespace).
		WithLabels(g.Labels()).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(g.SelectorLabels())).
			WithStrategy(appsv1ac.DeploymentStrategy().
				WithType(appsv1.RollingUpdateDeploymentStrategyType).
				WithRollingUpdate(appsv1ac.RollingUpdateDeployment().WithMaxSurge(surge).WithMaxUnavailable(unavailable))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).
				WithAnnotations(map[string]string{
					"inject.istio.io/templates": "gateway",
					"prometheus.io/path":        "/stats/prometheus",
					"prometheus.io/port":        "15020",
					"prometheus.io/scrape":      "true",
				}).
				WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(g.ServiceAccountName()).
					WithContainers(container))))
}

// Service exposes the gateway to the other clusters.
func (g Gateway) Service() *corev1ac.ServiceApplyConfiguration {
	spec := corev1ac.ServiceSpec().
		WithType(g.Exposure.ServiceType()).
		WithSelector(g.SelectorLabels())
	for _, p := range g.Ports {
		sp := corev1ac.ServicePort().
			WithName(p.Name).
			WithPort(p.Number).
			WithTargetPort(intstr.FromInt32(p.Number)).
			WithProtocol(corev1.ProtocolTCP)
		if np, ok := g.Exposure.NodePorts[p.Name]; ok && g.Exposure.ServiceType() != corev1.ServiceTypeClusterIP {
			sp.WithNodePort(np)
		}
		spec.WithPorts(sp)
	}
	if a := g.Exposure.Address; a != "" {
		if g.Exposure.ServiceType() == corev1.ServiceTypeLoadBalancer {
			spec.WithLoadBalancerIP(a)
		} else {
			spec.WithExternalIPs(a)
		}
	}
	return corev1ac.Service(g.Name, g.Namespace).WithLabels(g.Labels()).WithSpec(spec)
}

// PodDisruptionBudget keeps one gateway pod through voluntary disruptions:
// losing it cuts every cross-cluster connection.
func (g Gateway) PodDisruptionBudget() *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(g.Name, g.Namespace).
		WithLabels(g.Labels()).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMinAvailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(g.SelectorLabels())))
}

// HorizontalPodAutoscaler scales the gateway on CPU.
func (g Gateway) HorizontalPodAutoscaler() *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration {
	return autoscalingv2ac.HorizontalPodAutoscaler(g.Name, g.Namespace).
		WithLabels(g.Labels()).
		WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().
			WithScaleTargetRef(autoscalingv2ac.CrossVersionObjectReference().
				WithAPIVersion("apps/v1").WithKind("Deployment").WithName(g.Name)).
			WithMinReplicas(g.MinReplicas).
			WithMaxReplicas(g.MaxReplicas).
			WithMetrics(autoscalingv2ac.MetricSpec().
				WithType(autoscalingv2.ResourceMetricSourceType).
				WithResource(autoscalingv2ac.ResourceMetricSource().
					WithName(corev1.ResourceCPU).
					WithTarget(autoscalingv2ac.MetricTarget().
						WithType(autoscalingv2.UtilizationMetricType).
						WithAverageUtilization(80)))))
}

// SDSRole lets the gateway's proxy read TLS credentials (SDS) in its namespace.
func (g Gateway) SDSRole() *rbacv1ac.RoleApplyConfiguration {
	return rbacv1ac.Role(g.Name+"-sds", g.Namespace).
		WithLabels(g.Labels()).
		WithRules(rbacv1ac.PolicyRule().
			WithAPIGroups("").
			WithResources("secrets").
			WithVerbs("get", "watch", "list"))
}

// SDSRoleBinding binds SDSRole to the gateway's service account.
func (g Gateway) SDSRoleBinding() *rbacv1ac.RoleBindingApplyConfiguration {
	return rbacv1ac.RoleBinding(g.Name+"-sds", g.Namespace).
		WithLabels(g.Labels()).
		WithRoleRef(rbacv1ac.RoleRef().
			WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(g.Name + "-sds")).
		WithSubjects(rbacv1ac.Subject().
			WithKind("ServiceAccount").WithName(g.ServiceAccountName()).WithNamespace(g.Namespace))
}

// Objects are the gateway's objects in apply order: identity and RBAC before
// the pods that use them, the Service last but one so its address is
// allocated while the autoscaler is written.
func (g Gateway) Objects() ([]kube.Object, error) {
	if g.Ambient {
		return []kube.Object{kube.Custom(g.GatewayAPI())}, nil
	}
	var objs []kube.Object
	add := func(o kube.Object, err error) error {
		if err != nil {
			return fmt.Errorf("gateway %s/%s: %w", g.Namespace, g.Name, err)
		}
		objs = append(objs, o)
		return nil
	}
	steps := []func() (kube.Object, error){
		func() (kube.Object, error) {
			return kube.Typed(g.ServiceAccount(), func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceAccountApplyConfiguration) (metav1.Object, error) {
				return c.Kube.CoreV1().ServiceAccounts(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.SDSRole(), func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleApplyConfiguration) (metav1.Object, error) {
				return c.Kube.RbacV1().Roles(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.SDSRoleBinding(), func(ctx context.Context, c *kube.Cluster, ac *rbacv1ac.RoleBindingApplyConfiguration) (metav1.Object, error) {
				return c.Kube.RbacV1().RoleBindings(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.Deployment(), func(ctx context.Context, c *kube.Cluster, ac *appsv1ac.DeploymentApplyConfiguration) (metav1.Object, error) {
				return c.Kube.AppsV1().Deployments(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.PodDisruptionBudget(), func(ctx context.Context, c *kube.Cluster, ac *policyv1ac.PodDisruptionBudgetApplyConfiguration) (metav1.Object, error) {
				return c.Kube.PolicyV1().PodDisruptionBudgets(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.Service(), func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
				return c.Kube.CoreV1().Services(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
		func() (kube.Object, error) {
			return kube.Typed(g.HorizontalPodAutoscaler(), func(ctx context.Context, c *kube.Cluster, ac *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration) (metav1.Object, error) {
				return c.Kube.AutoscalingV2().HorizontalPodAutoscalers(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
			})
		},
	}
	for _, step := range steps {
		if err := add(step()); err != nil {
			return nil, err
		}
	}
	return objs, nil
}
