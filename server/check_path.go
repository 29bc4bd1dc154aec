package server

import (
	"fmt"
	"net"
	"strings"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/gateways"
)

// pathChecks say, per remote secret the topology asks reader c to hold,
// which way it reaches its target's API server (direct, or via the
// target's east-west gateway), whether that is the way the spec's
// apiServerAccess says, and whether the reader authenticates through it
// (the secret's kubeconfig used as-is, status' probe).
func pathChecks(p *plan, st *Status, plans map[string]gateways.ClusterPlan, c ClusterStatus) []Check {
	gatewayOf := map[string]string{}
	for _, o := range st.Clusters {
		gatewayOf[o.Name] = o.GatewayAddress
	}
	var out []Check
	for _, rs := range c.RemoteSecrets {
		if !rs.Expected {
			continue
		}
		t, ok := p.Layout.Cluster(rs.Target)
		if !ok {
			continue
		}
		ck := Check{Name: "API server path", Cluster: c.Name}
		secret := rs.Namespace + "/" + rs.Name
		viaGateway := strings.HasPrefix(rs.Path, "via gateway ")
		switch {
		case t.ExposesAPIServer && !viaGateway:
			ck.Message = fmt.Sprintf("%s: secret %s reads it %s, but its apiServerAccess is gateway", rs.Target, secret, orNone(rs.Path))
			ck.Hint = "run flotilla apply: it rewrites the secret with the gateway path"
		case t.ExposesAPIServer && gatewayOf[rs.Target] != "" && gatewayHost(rs.Path) != gatewayOf[rs.Target]:
			ck.Message = fmt.Sprintf("%s: secret %s reads it %s, but its east-west gateway's address is %s", rs.Target, secret, rs.Path, gatewayOf[rs.Target])
			ck.Hint = "run flotilla apply: it rewrites the secret with the gateway's current address"
		case !t.ExposesAPIServer && viaGateway:
			ck.Message = fmt.Sprintf("%s: secret %s reads it %s, but its apiServerAccess is direct", rs.Target, secret, rs.Path)
			ck.Hint = "run flotilla apply: it rewrites the secret with the direct address"
		case !rs.Healthy:
			ck.Message = fmt.Sprintf("%s: %s does not work: %s", rs.Target, rs.Path, rs.Error)
			if t.ExposesAPIServer {
				ns := plans[rs.Target].Namespace
				ck.Hint = fmt.Sprintf("%s's API server is read through its east-west gateway: check that Service %s/%s has port %s and an address, that Gateway %s and VirtualService %s exist in %s (flotilla apply writes them) and that the gateway's pods are ready",
					rs.Target, ns, gateways.EastWestName, deploy.PortAPIServerName, gateways.APIServerGatewayName, gateways.APIServerVirtualServiceName, ns)
			} else {
				ck.Hint = fmt.Sprintf("%s reaches %s's API server directly at that address: if that API server is private, set apiServerAccess: gateway on cluster %s in the spec and apply", c.Name, rs.Target, rs.Target)
			}
		default:
			ck.OK = true
			ck.Message = fmt.Sprintf("%s: %s", rs.Target, rs.Path)
		}
		out = append(out, ck)
	}
	return out
}

// gatewayHost is the host of a "via gateway host:port" path.
func gatewayHost(path string) string {
	hp := strings.TrimPrefix(path, "via gateway ")
	if h, _, err := net.SplitHostPort(hp); err == nil {
		return h
	}
	return hp
}

func orNone(s string) string {
	if s == "" {
		return "(no readable kubeconfig)"
	}
	return s
}
