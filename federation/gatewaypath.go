package federation

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy"
)

// GatewayPath is where a cluster's east-west gateway passes TLS through to
// its API server (apiServerAccess: gateway): the gateway's external host and
// the port other clusters reach the API server port at (the node port of a
// NodePort gateway).
type GatewayPath struct {
	Host string
	Port int32
}

func (g GatewayPath) String() string {
	return net.JoinHostPort(g.Host, strconv.Itoa(int(g.Port)))
}

// GatewayEndpoint is what the secrets that read cluster through its
// gateway name: the gateway's address and API server port as the server,
// and as tls-server-name the API server's name (deploy.APIServerSNI), which
// the gateway routes on and the API server's certificate carries, so that
// the reader verifies the API server itself behind the gateway. The CA is
// the API server's, from the admin connection (cfg). Loopback gateway
// addresses are refused unless allowLoopback, as direct ones are.
func GatewayEndpoint(cluster string, gw GatewayPath, cfg *rest.Config, allowLoopback bool) (Endpoint, error) {
	if gw.Host == "" || gw.Port <= 0 {
		return Endpoint{}, fmt.Errorf("%s: apiServerAccess gateway: its east-west gateway has no address or no %s port yet (flotilla apply waits for it; check the gateway Service)", cluster, deploy.PortAPIServerName)
	}
	server, err := normalizeServer(gw.String())
	if err != nil {
		return Endpoint{}, fmt.Errorf("%s: east-west gateway address %s: %w", cluster, gw, err)
	}
	if !allowLoopback && IsLoopback(server) {
		return Endpoint{}, fmt.Errorf("%s: east-west gateway address %s is loopback, which other clusters cannot reach (allow loopback for a local lab)", cluster, server)
	}
	ep := Endpoint{Server: server, TLSServerName: deploy.APIServerSNI, Gateway: gw.String()}
	if cfg != nil {
		ep.CAData = cfg.TLSClientConfig.CAData
		if len(ep.CAData) == 0 && cfg.TLSClientConfig.CAFile != "" {
			ca, err := os.ReadFile(cfg.TLSClientConfig.CAFile)
			if err != nil {
				return Endpoint{}, fmt.Errorf("%s: read CA file: %w", cluster, err)
			}
			ep.CAData = ca
		}
	}
	return ep, nil
}

// Path says which way a reader reaches the API server at ep: "via gateway
// <host:port>" or "direct <server>".
func (ep Endpoint) Path() string {
	if ep.Gateway != "" {
		return "via gateway " + ep.Gateway
	}
	return "direct " + ep.Server
}
