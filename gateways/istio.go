package gateways

import (
	"encoding/json"
	"fmt"

	networking "istio.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Names of the Istio resources that configure the gateways.
const (
	CrossNetworkGatewayName          = "cross-network-gateway"
	IstiodGatewayName                = "istiod-gateway"
	IstiodVirtualServiceName         = "istiod-vs"
	ExternalIstiodGatewayName        = "external-istiod-gw"
	ExternalIstiodVirtualServiceName = "external-istiod-vs"
)

const networkingAPIVersion = "networking.istio.io/v1"

// CrossNetworkGateway lets the east-west gateway pass mTLS traffic for any
// mesh service (*.local) through to its workloads, routed by SNI
// (AUTO_PASSTHROUGH), so that clusters on other networks reach them.
func CrossNetworkGateway(namespace string) *unstructured.Unstructured {
	return gatewayResource(CrossNetworkGatewayName, namespace, &networking.Gateway{
		Selector: map[string]string{"istio": EastWestSelector},
		Servers: []*networking.Server{{
			Port:  &networking.Port{Number: PortTLS, Name: "tls", Protocol: "TLS"},
			Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_AUTO_PASSTHROUGH},
			Hosts: []string{"*.local"},
		}},
	})
}

// IstiodGateway exposes a primary's istiod through its east-west gateway to
// the proxies (15012) and API servers (15017) of its remote clusters; TLS is
// passed through so that istiod's own certificate is what they verify.
func IstiodGateway(namespace string) *unstructured.Unstructured {
	return gatewayResource(IstiodGatewayName, namespace, &networking.Gateway{
		Selector: map[string]string{"istio": EastWestSelector},
		Servers: []*networking.Server{
			{
				Port:  &networking.Port{Number: PortIstiod, Name: "tls-istiod", Protocol: "tls"},
				Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH},
				Hosts: []string{"*"},
			},
			{
				Port:  &networking.Port{Number: PortWebhook, Name: "tls-istiodwebhook", Protocol: "tls"},
				Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH},
				Hosts: []string{"*"},
			},
		},
	})
}

// IstiodVirtualService routes IstiodGateway's ports to istiod: 15012 to its
// xDS/CA port, 15017 to its webhook port 443.
func IstiodVirtualService(namespace string) *unstructured.Unstructured {
	host := fmt.Sprintf("istiod.%s.svc.cluster.local", namespace)
	return virtualServiceResource(IstiodVirtualServiceName, namespace, istiodRoutes(IstiodGatewayName, host))
}

// ExternalIstiodGateway exposes an external istiod through the control-plane
// cluster's ingress gateway, as in the OpenShift Service Mesh 3 installation
// guide, chapter 8.
func ExternalIstiodGateway(namespace string) *unstructured.Unstructured {
	return gatewayResource(ExternalIstiodGatewayName, namespace, &networking.Gateway{
		Selector: map[string]string{"istio": IngressSelector},
		Servers: []*networking.Server{
			{
				Port:  &networking.Port{Number: PortIstiod, Name: "tls-XDS", Protocol: "tls"},
				Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH},
				Hosts: []string{"*"},
			},
			{
				Port:  &networking.Port{Number: PortWebhook, Name: "tls-WEBHOOK", Protocol: "tls"},
				Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH},
				Hosts: []string{"*"},
			},
		},
	})
}

// ExternalIstiodVirtualService routes ExternalIstiodGateway to the external
// istiod's Service, istiod-<revision> in its namespace.
func ExternalIstiodVirtualService(namespace, revision string) *unstructured.Unstructured {
	host := fmt.Sprintf("istiod-%s.%s.svc.cluster.local", revision, namespace)
	return virtualServiceResource(ExternalIstiodVirtualServiceName, namespace, istiodRoutes(ExternalIstiodGatewayName, host))
}

func istiodRoutes(gateway, host string) *networking.VirtualService {
	route := func(port, target uint32) *networking.TLSRoute {
		return &networking.TLSRoute{
			Match: []*networking.TLSMatchAttributes{{Port: port, SniHosts: []string{"*"}}},
			Route: []*networking.RouteDestination{{Destination: &networking.Destination{
				Host: host,
				Port: &networking.PortSelector{Number: target},
			}}},
		}
	}
	return &networking.VirtualService{
		Hosts:    []string{"*"},
		Gateways: []string{gateway},
		Tls:      []*networking.TLSRoute{route(PortIstiod, PortIstiod), route(PortWebhook, 443)},
	}
}

func gatewayResource(name, namespace string, spec *networking.Gateway) *unstructured.Unstructured {
	data, err := spec.MarshalJSON()
	u := istioResource("Gateway", name, namespace, data, err)
	// Protobuf JSON leaves out enum zero values, and PASSTHROUGH is TLS
	// mode 0; write every mode so the resource says what it does.
	servers, _, _ := unstructured.NestedSlice(u.Object, "spec", "servers")
	for i, s := range spec.Servers {
		if s.Tls != nil {
			_ = unstructured.SetNestedField(servers[i].(map[string]any), s.Tls.Mode.String(), "tls", "mode")
		}
	}
	_ = unstructured.SetNestedSlice(u.Object, servers, "spec", "servers")
	return u
}

func virtualServiceResource(name, namespace string, spec *networking.VirtualService) *unstructured.Unstructured {
	data, err := spec.MarshalJSON()
	return istioResource("VirtualService", name, namespace, data, err)
}

// istioResource assembles an Istio resource around a spec marshalled by the
// istio.io/api types, which use protobuf JSON names (sniHosts, not sni_hosts).
func istioResource(kind, name, namespace string, spec []byte, err error) *unstructured.Unstructured {
	var m map[string]any
	if err == nil {
		err = json.Unmarshal(spec, &m)
	}
	if err != nil {
		// The specs are built from constants in this file; failing to encode
		// them is a programming error.
		panic(fmt.Sprintf("gateways: encode %s %s/%s: %v", kind, namespace, name, err))
	}
	u := &unstructured.Unstructured{Object: map[string]any{"spec": m}}
	u.SetAPIVersion(networkingAPIVersion)
	u.SetKind(kind)
	u.SetName(name)
	u.SetNamespace(namespace)
	u.SetLabels(map[string]string{ManagedByLabel: ManagedBy})
	return u
}
