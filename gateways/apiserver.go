package gateways

import (
	networking "istio.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy"
)

// Names of the resources that expose a cluster's API server on its
// east-west gateway (apiServerAccess: gateway).
const (
	APIServerGatewayName        = "kube-apiserver-gateway"
	APIServerVirtualServiceName = "kube-apiserver-vs"
)

// PortAPIServer is the east-west gateway's port for the API server, a port
// of its own: 15443's AUTO_PASSTHROUGH routes only the mesh's SNI-DNAT
// names, and istiod's 15012/15017 route every name to istiod.
const PortAPIServer = deploy.PortAPIServer

// APIServerGateway opens PortAPIServer on the east-west gateway for TLS
// passed through (the API server's own certificate is what the readers
// verify, and their bearer tokens stay end to end), for the API server's
// name only: a connection with any other SNI matches no filter chain and
// is closed, so nothing else of the cluster is exposed on that port.
func APIServerGateway(namespace string) *unstructured.Unstructured {
	return gatewayResource(APIServerGatewayName, namespace, &networking.Gateway{
		Selector: map[string]string{"istio": EastWestSelector},
		Servers: []*networking.Server{{
			Port:  &networking.Port{Number: PortAPIServer, Name: deploy.PortAPIServerName, Protocol: "TLS"},
			Tls:   &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH},
			Hosts: []string{deploy.APIServerSNI},
		}},
	})
}

// APIServerVirtualService routes APIServerGateway's port, for SNI
// kubernetes.default.svc, to the in-cluster kubernetes Service's 443: the
// gateway's router gets a listener on PortAPIServer whose filter chain
// matches that server name and proxies TCP to
// outbound|443||kubernetes.default.svc.cluster.local, whose endpoints are
// the API servers'. Istio requires the SNI hosts to be within the
// VirtualService's hosts.
func APIServerVirtualService(namespace string) *unstructured.Unstructured {
	return virtualServiceResource(APIServerVirtualServiceName, namespace, &networking.VirtualService{
		Hosts:    []string{deploy.APIServerSNI},
		Gateways: []string{APIServerGatewayName},
		Tls: []*networking.TLSRoute{{
			Match: []*networking.TLSMatchAttributes{{Port: PortAPIServer, SniHosts: []string{deploy.APIServerSNI}}},
			Route: []*networking.RouteDestination{{Destination: &networking.Destination{
				Host: deploy.APIServerService,
				Port: &networking.PortSelector{Number: deploy.APIServerTargetPort},
			}}},
		}},
	})
}
