package gateways

import (
	"context"
	"fmt"

	networking "istio.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
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

// UnexposeAPIServer deletes the API server's Gateway and VirtualService
// from namespace when flotilla wrote them (its managed-by label), for a
// cluster no longer read through its gateway: leaving them would keep the
// API server exposed after the spec says direct. (The gateway Service's
// tls-kube-api port goes with the next apply of the Service, whose ports
// flotilla's field manager owns.) It returns the objects deleted.
func UnexposeAPIServer(ctx context.Context, c *kube.Cluster, namespace string) ([]string, error) {
	var deleted []string
	for _, u := range []*unstructured.Unstructured{APIServerGateway(namespace), APIServerVirtualService(namespace)} {
		ref := kube.ObjectRef(u)
		gvr, _, err := c.Resource(ctx, u.GroupVersionKind())
		if meta.IsNoMatchError(err) {
			continue // no Istio CRDs: nothing of the kind was written
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
		if got.GetLabels()[ManagedByLabel] != ManagedBy {
			continue // someone else's
		}
		if err := ri.Delete(ctx, u.GetName(), c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			return deleted, fmt.Errorf("%s: delete %s: %w", c.Name, ref, err)
		}
		deleted = append(deleted, ref)
	}
	return deleted, nil
}
