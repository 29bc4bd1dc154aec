package emulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"

	"crypto/tls"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// With Config.Istiod a gateway's router also follows its listeners (LDS),
// as Envoy does, and the emulator plays every TLS passthrough listener
// istiod sent it: a listener whose filter chains match server names (SNI)
// without terminating TLS and end in a TCP proxy to a cluster. That is what
// istiod makes of a Gateway server with tls.mode PASSTHROUGH and a
// VirtualService tls route bound to it (an API server exposed on the east-
// west gateway, for one). The connection goes, TLS untouched, to an
// endpoint istiod sent the router for the chain's cluster (EDS); a server
// name no chain matches is closed, as Envoy closes it. 15443's
// AUTO_PASSTHROUGH listener is gatewayHandler's.

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// tcpProxyFilter is the network filter a passthrough chain ends in.
const tcpProxyFilter = "envoy.filters.network.tcp_proxy"

// requestListeners subscribes a router (a gateway's proxy) to its
// listeners; sidecars' listeners are not played.
func requestListeners(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, nodeID string) error {
	if !strings.HasPrefix(nodeID, "router~") {
		return nil
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType}); err != nil {
		return fmt.Errorf("istiod ADS: %w", err)
	}
	return nil
}

// otherResponse takes an xDS response of a type the ADS loop does not
// follow itself: it counts it, and keeps and acknowledges listeners.
func (a *agent) otherResponse(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoveryv3.DiscoveryResponse) error {
	a.mu.Lock()
	a.responses[resp.TypeUrl]++
	a.mu.Unlock()
	if resp.TypeUrl != listenerType {
		return nil
	}
	lds := map[string]*listenerv3.Listener{}
	for _, r := range resp.Resources {
		l := &listenerv3.Listener{}
		if err := r.UnmarshalTo(l); err != nil {
			return fmt.Errorf("istiod ADS: listener: %w", err)
		}
		lds[l.Name] = l
	}
	a.mu.Lock()
	a.lds = lds
	a.mu.Unlock()
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		return fmt.Errorf("istiod ADS: %w", err)
	}
	return nil
}

// passthroughChain is one filter chain of a passthrough listener.
type passthroughChain struct {
	serverNames []string
	cluster     string
}

// passthroughPorts are the router's TLS passthrough listeners, by port.
func (a *agent) passthroughPorts() map[uint32][]passthroughChain {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[uint32][]passthroughChain{}
	for _, l := range a.lds {
		port := l.GetAddress().GetSocketAddress().GetPortValue()
		for _, fc := range l.GetFilterChains() {
			names := fc.GetFilterChainMatch().GetServerNames()
			if len(names) == 0 || fc.GetTransportSocket() != nil {
				continue // not by SNI, or TLS terminated here
			}
			if cl := tcpProxyCluster(fc); cl != "" {
				out[port] = append(out[port], passthroughChain{serverNames: names, cluster: cl})
			}
		}
	}
	return out
}

// tcpProxyCluster is the cluster a filter chain's TCP proxy sends to ("" if
// it ends in none).
func tcpProxyCluster(fc *listenerv3.FilterChain) string {
	for _, f := range fc.GetFilters() {
		if f.GetName() != tcpProxyFilter {
			continue
		}
		tp := &tcpproxyv3.TcpProxy{}
		if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
			return ""
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

// match is the chain whose server names take sni: an exact name first,
// then the longest wildcard suffix, as Envoy's filter chain match does.
func match(chains []passthroughChain, sni string) (passthroughChain, bool) {
	best, bestLen := passthroughChain{}, -1
	for _, ch := range chains {
		for _, n := range ch.serverNames {
			switch {
			case n == sni:
				return ch, true
			case strings.HasPrefix(n, "*.") && strings.HasSuffix(sni, n[1:]) && len(n) > bestLen:
				best, bestLen = ch, len(n)
			}
		}
	}
	return best, bestLen >= 0
}

// passthroughListeners asks for a listener on gateway g's address for each
// passthrough port istiod sent the gateway's router (flotilla's gateway
// Services expose each port as itself, so the Service port is the
// listener's).
func (e *Emulator) passthroughListeners(cluster string, g gatewayInfo, want map[string]func(net.Conn), kinds map[string]string) {
	a := e.gatewayAgent(cluster, g.selector)
	if a == nil {
		return
	}
	ports := a.passthroughPorts()
	keys := make([]int, 0, len(ports))
	for p := range ports {
		keys = append(keys, int(p))
	}
	sort.Ints(keys)
	for _, port := range keys {
		if port == crossNetworkPort {
			continue
		}
		addr := net.JoinHostPort(g.address, strconv.Itoa(port))
		want[addr], kinds[addr] = e.passthroughHandler(cluster, g.selector, uint32(port)), fmt.Sprintf("gateway %s passthrough %d", cluster, port)
	}
}

// passthroughHandler reads the ClientHello's server name, picks the chain
// of the router's listener on port that matches it and passes the stream to
// an endpoint of that chain's cluster.
func (e *Emulator) passthroughHandler(cluster, selector string, port uint32) func(net.Conn) {
	return func(c net.Conn) {
		var hello bytes.Buffer
		sni := ""
		errSeen := errors.New("client hello read")
		_ = tls.Server(&peekedConn{Conn: c, r: io.TeeReader(c, &hello), noWrite: true}, &tls.Config{
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sni = h.ServerName
				return nil, errSeen
			},
		}).Handshake()
		a := e.gatewayAgent(cluster, selector)
		if a == nil {
			e.logf("%s: gateway %s: port %d: no configuration from istiod", cluster, selector, port)
			return
		}
		ch, ok := match(a.passthroughPorts()[port], sni)
		if !ok {
			e.logf("%s: gateway %s: port %d: no filter chain for server name %q: closed", cluster, selector, port, sni)
			return
		}
		_, eps := a.endpoints(ch.cluster)
		if len(eps) == 0 {
			e.logf("%s: gateway %s: port %d: no endpoint for %s", cluster, selector, port, ch.cluster)
			return
		}
		ep := eps[e.next(cluster+"/gateway/"+ch.cluster, len(eps))]
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		up, err := dialEndpoint(ctx, ep.ip, ep.port)
		cancel()
		if err != nil {
			e.logf("%s: gateway %s: port %d: %s: %v", cluster, selector, port, ch.cluster, err)
			return
		}
		passThrough(c, up, hello.Bytes())
	}
}
