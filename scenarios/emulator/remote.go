package emulator

import (
	"context"
	"fmt"
	"net"

	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// istiodTarget is where a pod's istio-agent reaches istiod at addr (its
// discoveryAddress, host:port) and the name it checks istiod's certificate
// against, as istio-agent does: a Service name resolves in the pod's own
// cluster (for a remote, the chart's istiod Service whose EndpointSlice
// holds remotePilotAddress, the primary's gateway); an address (an
// external control plane's discoveryAddress, its ingress gateway) is
// dialled as is, at its lab stand-in. The TLS server name is the host
// either way (istiod puts its discoveryAddress host in its certificate),
// unless ISTIOD_SAN names another.
func istiodTarget(ctx context.Context, cluster string, kc kubernetes.Interface, addr string, env map[string]string) (dial, serverName string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("%s: istiod address %q: %w", cluster, addr, err)
	}
	serverName = host
	if san := env["ISTIOD_SAN"]; san != "" {
		serverName = san
	}
	if ip := net.ParseIP(host); ip != nil {
		lb, ok := lab.Dialable(ip)
		if !ok {
			return "", "", fmt.Errorf("%s: istiod address %s is outside the lab's addresses: not dialled", cluster, addr)
		}
		return net.JoinHostPort(lb.String(), port), serverName, nil
	}
	dial, err = resolveService(ctx, cluster, kc, host, port)
	return dial, serverName, err
}
