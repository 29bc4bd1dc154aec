package deploy

import "fmt"

// APIServerAccess is how the istiods that read a cluster reach its API
// server.
type APIServerAccess string

const (
	// APIServerDirect: at the address in the spec (apiServer) or in the
	// operator's kubeconfig. The default ("" means direct).
	APIServerDirect APIServerAccess = "direct"
	// APIServerViaGateway: through the cluster's east-west gateway, which
	// passes TLS through to the in-cluster kubernetes Service, for API
	// servers other clusters cannot reach (private clusters).
	APIServerViaGateway APIServerAccess = "gateway"
)

// APIServerAccesses lists the valid values, the default first.
func APIServerAccesses() []APIServerAccess {
	return []APIServerAccess{APIServerDirect, APIServerViaGateway}
}

// The API server's exposure on an east-west gateway: the gateway port of
// its own, the TLS server name the readers send and the gateway routes on,
// and the in-cluster Service it routes to. kube-apiserver's serving
// certificate carries kubernetes.default.svc among its names (its own
// self-signed one, kubeadm's and the managed clouds'), so a reader that
// sends it as SNI also verifies the certificate against it.
const (
	PortAPIServer       = 6443
	PortAPIServerName   = "tls-kube-api"
	APIServerSNI        = "kubernetes.default.svc"
	APIServerService    = "kubernetes.default.svc.cluster.local"
	APIServerTargetPort = 443
)

// normalizeAccess defaults "" to direct and refuses unknown values.
func normalizeAccess(m Member) (APIServerAccess, error) {
	switch m.APIServerAccess {
	case "", APIServerDirect:
		return APIServerDirect, nil
	case APIServerViaGateway:
		return APIServerViaGateway, nil
	}
	return "", fmt.Errorf("cluster %s: apiServerAccess %q is not one of %s, %s", m.Name, m.APIServerAccess, APIServerDirect, APIServerViaGateway)
}
