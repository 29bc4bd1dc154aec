package emulator

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// A gateway's router also passes TLS through on the
// ports its Gateway resources open in PASSTHROUGH mode (an east-west
// gateway exposing istiod on 15012 and 15017 to remote clusters, the
// control-plane cluster's ingress exposing an external istiod), as istiod
// configured its Envoy: the router's agent subscribes to listeners (LDS)
// too, and a connection to the gateway's load-balancer address on a
// Service port goes to the listener on its target port, through the filter
// chain whose server names match the ClientHello's SNI, to an endpoint
// istiod sent for that chain's tcp_proxy cluster. 15443 (AUTO_PASSTHROUGH,
// clusters named by SNI) stays with gatewayHandler.

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// tcpProxyFilter is the network filter of a TLS passthrough chain.
const tcpProxyFilter = "envoy.filters.network.tcp_proxy"

// isRouter says whether the agent's node is a gateway's (pilot-agent proxy router).
func (a *agent) isRouter() bool {
	args := a.proxy.Args
	return len(args) > 1 && args[0] == "proxy" && args[1] == "router"
}

// setListeners keeps the listeners of an LDS response (state of the world).
func (a *agent) setListeners(resp *discoveryv3.DiscoveryResponse) error {
	ls := map[string]*listenerv3.Listener{}
	for _, r := range resp.Resources {
		l := &listenerv3.Listener{}
		if err := r.UnmarshalTo(l); err != nil {
			return fmt.Errorf("istiod ADS: listener: %w", err)
		}
		ls[l.Name] = l
	}
	a.mu.Lock()
	a.listeners = ls
	a.responses[listenerType]++
	a.mu.Unlock()
	return nil
}

// passthroughPorts are the ports of the router's listeners that pass TLS
// through to a tcp_proxy cluster (15443 excepted), sorted.
func (a *agent) passthroughPorts() []int32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int32
	for _, l := range a.listeners {
		port := int32(l.GetAddress().GetSocketAddress().GetPortValue())
		if port == 0 || port == crossNetworkPort || slices.Contains(out, port) {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			if tcpProxyCluster(fc) != "" {
				out = append(out, port)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// passthroughCluster is the tcp_proxy cluster of the chain of the listener
// on port that Envoy picks for sni: a chain naming sni exactly, else the
// longest wildcard suffix naming it, else one with no server names.
func (a *agent) passthroughCluster(port int32, sni string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	best, bestRank := "", -1
	for _, l := range a.listeners {
		if int32(l.GetAddress().GetSocketAddress().GetPortValue()) != port {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			cl := tcpProxyCluster(fc)
			m := fc.GetFilterChainMatch()
			if cl == "" || m.GetDestinationPort() != nil && int32(m.GetDestinationPort().GetValue()) != port {
				continue
			}
			if rank := serverNameRank(m.GetServerNames(), sni); rank > bestRank {
				best, bestRank = cl, rank
			}
		}
	}
	if best == "" {
		return "", fmt.Errorf("istiod sent no passthrough filter chain on port %d for SNI %q", port, sni)
	}
	return best, nil
}

// serverNameRank: -1 no match; 0 a chain for any name; 1+len(suffix) a
// wildcard *.suffix; 1<<20 the exact name (Envoy's order of preference).
func serverNameRank(names []string, sni string) int {
	if len(names) == 0 {
		return 0
	}
	rank := -1
	for _, n := range names {
		switch {
		case n == sni:
			return 1 << 20
		case n == "*":
			rank = max(rank, 0)
		case strings.HasPrefix(n, "*.") && strings.HasSuffix(sni, n[1:]):
			rank = max(rank, 1+len(n))
		}
	}
	return rank
}

// tcpProxyCluster is the cluster of a chain's tcp_proxy filter (of a
// weighted one, its first cluster); "" when the chain has none or
// terminates TLS itself, which is not passthrough.
func tcpProxyCluster(fc *listenerv3.FilterChain) string {
	if fc.GetTransportSocket() != nil {
		return ""
	}
	for _, f := range fc.GetFilters() {
		if f.GetName() != tcpProxyFilter || f.GetTypedConfig() == nil {
			continue
		}
		tp := &tcpproxyv3.TcpProxy{}
		if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
			continue
		}
		if c := tp.GetCluster(); c != "" {
			return c
		}
		if w := tp.GetWeightedClusters().GetClusters(); len(w) > 0 {
			return w[0].GetName()
		}
	}
	return ""
}

// peekSNI reads a connection's TLS ClientHello without answering it: the
// SNI, and the bytes read, to replay upstream.
func peekSNI(c net.Conn) (string, *bytes.Buffer) {
	var hello bytes.Buffer
	sni := ""
	errSeen := errors.New("client hello read")
	_ = tls.Server(&peekedConn{Conn: c, r: io.TeeReader(c, &hello), noWrite: true}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			return nil, errSeen
		},
	}).Handshake()
	return sni, &hello
}

// passthroughHandler passes a connection to the gateway's Service port
// whose target is port as the router of cluster's gateway (label
// istio=selector) was configured to. The connection may live long (an ADS
// stream through the gateway), so it has no deadline once passed on.
func (e *Emulator) passthroughHandler(cluster, selector string, port int32) func(net.Conn) {
	return func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(callTimeout))
		sni, hello := peekSNI(c)
		a := e.gatewayAgent(cluster, selector)
		if a == nil {
			e.logf("%s: gateway %s: port %d: no configuration from istiod", cluster, selector, port)
			return
		}
		name, err := a.passthroughCluster(port, sni)
		if err != nil {
			e.logf("%s: gateway %s: %v", cluster, selector, err)
			return
		}
		cl, eps := a.endpoints(name)
		if cl == nil || len(eps) == 0 {
			e.logf("%s: gateway %s: port %d: istiod sent no endpoints for %s", cluster, selector, port, name)
			return
		}
		ep := eps[e.next(cluster+"/gateway/"+selector+"/"+name, len(eps))]
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		up, err := dialEndpoint(ctx, ep.ip, ep.port)
		cancel()
		if err != nil {
			e.logf("%s: gateway %s: port %d: %s: %v", cluster, selector, port, name, err)
			return
		}
		_ = c.SetDeadline(time.Time{})
		passThrough(c, up, hello.Bytes())
	}
}

// passthroughListeners adds to want, per gateway of
// cluster v with a ready router, a listener on its load-balancer address
// for each Service port whose target port the router passes through.
func (e *Emulator) passthroughListeners(v *clusterView, want map[string]func(net.Conn), kinds map[string]string) {
	for _, g := range v.gateways {
		a := e.gatewayAgent(v.name, g.selector)
		if a == nil {
			continue
		}
		ip, ok := lab.Dialable(net.ParseIP(g.address))
		if !ok {
			continue
		}
		ports := a.passthroughPorts()
		for _, sp := range g.ports {
			if sp.port == crossNetworkPort || !slices.Contains(ports, sp.target) {
				continue
			}
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(int(sp.port)))
			want[addr], kinds[addr] = e.passthroughHandler(v.name, g.selector, sp.target), fmt.Sprintf("gateway %s %s passthrough %d", v.name, g.selector, sp.target)
		}
	}
}
