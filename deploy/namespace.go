package deploy

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Labels and annotations Istio reads on namespaces and gateways.
const (
	// NetworkLabel puts a namespace's or a gateway's pods on a network.
	NetworkLabel = "topology.istio.io/network"
	// ControlPlaneClustersAnnotation on a remote's control-plane namespace
	// names the clusters whose istiod manages it.
	ControlPlaneClustersAnnotation = "topology.istio.io/controlPlaneClusters"
)

// Namespace is a control-plane namespace: labelled with its network (when
// network is not ""), which tells istiod the network of the cluster's
// workloads, and carrying annotations such as ControlPlaneClustersAnnotation.
// Server-side apply owns only these fields, so labels others set survive.
func Namespace(name, network string, annotations map[string]string) *corev1ac.NamespaceApplyConfiguration {
	ns := corev1ac.Namespace(name).WithLabels(kube.ManagedLabels())
	if network != "" {
		ns.WithLabels(map[string]string{NetworkLabel: network})
	}
	if len(annotations) > 0 {
		ns.WithAnnotations(annotations)
	}
	return ns
}

// NamespaceObject wraps Namespace for a plan.
func NamespaceObject(name, network string, annotations map[string]string) (kube.Object, error) {
	return kube.Typed(Namespace(name, network, annotations), func(ctx context.Context, c *kube.Cluster, ac *corev1ac.NamespaceApplyConfiguration) (metav1.Object, error) {
		return c.Kube.CoreV1().Namespaces().Apply(ctx, ac, c.ApplyOptions())
	})
}
