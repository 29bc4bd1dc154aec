package deploy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// PortIstiod is where a gateway exposes istiod (xDS and CA) to the clusters
// it serves; remotes' and data planes' Istio values name it.
const PortIstiod = 15012

// Exposure is how a gateway Service is reached from other clusters.
type Exposure struct {
	// Type is the Service type; "" means LoadBalancer. NodePort and ClusterIP
	// (with Address) serve clusters without a load balancer.
	Type corev1.ServiceType
	// Address is a fixed address: requested as spec.loadBalancerIP for a
	// LoadBalancer, set as spec.externalIPs for the other types, and taken as
	// the gateway's address without waiting for a load balancer.
	Address string
	// NodePorts pins node ports by Service port name (NodePort, LoadBalancer).
	NodePorts map[string]int32
}

// ServiceType is the effective Service type.
func (e Exposure) ServiceType() corev1.ServiceType {
	if e.Type == "" {
		return corev1.ServiceTypeLoadBalancer
	}
	return e.Type
}

// Validate rejects exposures that can never yield an address.
func (e Exposure) Validate() error {
	switch e.ServiceType() {
	case corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeNodePort:
		return nil
	case corev1.ServiceTypeClusterIP:
		if e.Address == "" {
			return fmt.Errorf("service type ClusterIP needs a fixed address (externalIPs) to be reachable from other clusters")
		}
		return nil
	}
	return fmt.Errorf("unsupported service type %q (want LoadBalancer, NodePort or ClusterIP with an address)", e.Type)
}
