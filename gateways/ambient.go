package gateways

import (
	"context"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// The ambient east-west gateway (istio.io docs/ambient/install/multicluster,
// pilot/pkg/config/kube/gatewaycommon/classinfo.go of the pinned Istio).
const (
	GatewayAPIVersion = "gateway.networking.k8s.io/v1"
	// EastWestClassName is served by istiod when AMBIENT_ENABLE_MULTI_NETWORK
	// is on; istiod deploys the gateway (Deployment and Service named after
	// the Gateway: the class disables the -<class> suffix).
	EastWestClassName = "istio-east-west"
	// PortHBONE is the listener ztunnels of other networks open double
	// HBONE to.
	PortHBONE = 15008
	// HBONEListener is the listener's name.
	HBONEListener = "mesh"
	// TLSTerminateModeOption makes the listener terminate the outer HBONE
	// with the mesh's own mTLS.
	TLSTerminateModeOption = "gateway.istio.io/tls-terminate-mode"
	// ServiceTypeAnnotation sets the generated Service's type
	// (annotation.NetworkingServiceType).
	ServiceTypeAnnotation = "networking.istio.io/service-type"
)

// AmbientEastWest is the east-west gateway of an ambient cluster on
// network: a Gateway API Gateway that istiod turns into a deployment.
func AmbientEastWest(namespace, network string, exp Exposure) Gateway {
	return Gateway{
		Name:      EastWestName,
		Namespace: namespace,
		Network:   network,
		Ambient:   true,
		Ports:     []Port{{HBONEListener, PortHBONE}},
		Exposure:  exp,
	}
}

// GatewayAPI is an ambient gateway's Gateway: class istio-east-west, the
// network label (without it istiod of the other clusters does not take it
// for a network's gateway), one HBONE listener terminated with the mesh's
// mTLS (double HBONE). A Service type other than LoadBalancer goes in an
// annotation; a fixed address in spec.addresses.
func (g Gateway) GatewayAPI() *unstructured.Unstructured {
	labels := map[string]any{ManagedByLabel: ManagedBy}
	if g.Network != "" {
		labels[NetworkLabel] = g.Network
	}
	var listeners []any
	for _, p := range g.Ports {
		listeners = append(listeners, map[string]any{
			"name":     p.Name,
			"port":     int64(p.Number),
			"protocol": "HBONE",
			"tls": map[string]any{
				"mode":    "Terminate",
				"options": map[string]any{TLSTerminateModeOption: "ISTIO_MUTUAL"},
			},
		})
	}
	spec := map[string]any{"gatewayClassName": EastWestClassName, "listeners": listeners}
	if a := g.Exposure.Address; a != "" {
		kind := "Hostname"
		if net.ParseIP(a) != nil {
			kind = "IPAddress"
		}
		spec["addresses"] = []any{map[string]any{"type": kind, "value": a}}
	}
	meta := map[string]any{"name": g.Name, "namespace": g.Namespace, "labels": labels}
	if t := g.Exposure.ServiceType(); t != corev1.ServiceTypeLoadBalancer {
		meta["annotations"] = map[string]any{ServiceTypeAnnotation: string(t)}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": GatewayAPIVersion,
		"kind":       "Gateway",
		"metadata":   meta,
		"spec":       spec,
	}}
}

// RetireOtherMode deletes from namespace the east-west gateway objects
// flotilla wrote for the other dataplane mode, after a cluster changed
// mode: on an ambient cluster the classic gateway's workload, Service and
// Istio Gateways (istiod's own deployment of the ambient Gateway takes the
// name istio-eastwestgateway); on a sidecar cluster the Gateway API
// Gateway (istiod then removes what it deployed for it). Only objects with
// flotilla's managed-by label and no owner are deleted: istiod's
// deployment of the ambient Gateway carries the Gateway's labels but is
// owned by it. It returns the objects deleted.
func RetireOtherMode(ctx context.Context, c *kube.Cluster, namespace string, ambient bool) ([]string, error) {
	var stale []*unstructured.Unstructured
	if ambient {
		objs, err := EastWest(namespace, "", Exposure{}).Objects()
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			stale = append(stale, o.Unstructured())
		}
		stale = append(stale, CrossNetworkGateway(namespace), IstiodGateway(namespace), IstiodVirtualService(namespace))
	} else {
		stale = append(stale, AmbientEastWest(namespace, "", Exposure{}).GatewayAPI())
	}
	var deleted []string
	for _, u := range stale {
		ref := kube.ObjectRef(u)
		gvr, _, err := c.Resource(ctx, u.GroupVersionKind())
		if meta.IsNoMatchError(err) {
			continue // no such CRDs: nothing of the kind was written
		}
		if err != nil {
			return deleted, fmt.Errorf("%s: %s: %w", c.Name, ref, err)
		}
		ri := c.Dynamic.Resource(gvr).Namespace(namespace)
		got, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("%s: read %s: %w", c.Name, ref, err)
		}
		if got.GetLabels()[ManagedByLabel] != ManagedBy || len(got.GetOwnerReferences()) > 0 {
			continue // someone else's, or istiod's
		}
		if err := ri.Delete(ctx, u.GetName(), c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			return deleted, fmt.Errorf("%s: delete %s: %w", c.Name, ref, err)
		}
		deleted = append(deleted, ref)
	}
	return deleted, nil
}
