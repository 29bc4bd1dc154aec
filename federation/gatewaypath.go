package federation

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

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
		if ep.CAData, err = caData(cluster, cfg); err != nil {
			return Endpoint{}, err
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

// DefaultGatewayWait is Options.GatewayWait's default.
const DefaultGatewayWait = 30 * time.Second

// probePath probes ep once for a direct path; a gateway path is probed
// again every second, up to o.GatewayWait, until it answers: the first
// apply that exposes an API server writes the gateway's Gateway and
// VirtualService moments before the gateway's proxy listens on the port.
func probePath(ctx context.Context, cluster string, ep Endpoint, o Options) error {
	err := Probe(ctx, cluster, ep, o.ProbeTimeout)
	if err == nil || ep.Gateway == "" {
		return err
	}
	wait := o.GatewayWait
	if wait <= 0 {
		wait = DefaultGatewayWait
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
		if err = Probe(ctx, cluster, ep, o.ProbeTimeout); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w (through its east-west gateway %s, for %s)", err, ep.Gateway, wait)
}
