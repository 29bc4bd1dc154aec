package deploy

import (
	"fmt"
	"sort"
	"strings"
)

// DataplaneMode is how a cluster's workloads join the mesh.
type DataplaneMode string

const (
	// DataplaneSidecar: an Envoy sidecar injected into every pod; the
	// east-west gateway is the classic one (15443, AUTO_PASSTHROUGH).
	DataplaneSidecar DataplaneMode = "sidecar"
	// DataplaneAmbient: a ztunnel per node (Sail ZTunnel, IstioCNI with the
	// ambient profile); cross-network traffic is double HBONE through a
	// Gateway API Gateway of class istio-east-west on 15008.
	DataplaneAmbient DataplaneMode = "ambient"
)

// DataplaneModes lists the valid modes, the default first.
func DataplaneModes() []DataplaneMode { return []DataplaneMode{DataplaneSidecar, DataplaneAmbient} }

// Valid reports whether m is a known mode ("" is the default, sidecar).
func (m DataplaneMode) Valid() bool {
	return m == "" || m == DataplaneSidecar || m == DataplaneAmbient
}

// Ambient reports whether the cluster runs ambient.
func (m Member) Ambient() bool { return m.DataplaneMode == DataplaneAmbient }

// AmbientIstio is the Istio release whose ambient multicluster support the
// rules below state (the pinned istio.io/istio source, the 1.30 line, and
// istio.io's docs/ambient/install/multicluster). AmbientMinIstio is the
// oldest release flotilla installs ambient with: multi-network ambient is
// beta since 1.29, and Sail's ZTunnel v1 accepts no older version.
const (
	AmbientIstio    = "1.30"
	AmbientMinIstio = "1.29"
)

// Ambient namespaces and environment.
const (
	// DefaultZTunnelNamespace holds the Sail ZTunnel's DaemonSet, as the
	// Sail and OpenShift Service Mesh guides install it; istiod trusts
	// ztunnel's identity in it (pilot.trustedZtunnelNamespace).
	DefaultZTunnelNamespace = "ztunnel"
	// ZTunnelName is the only name Sail's ZTunnel accepts.
	ZTunnelName = "default"
	// AmbientMultiNetworkEnv turns on istiod's ambient multi-network
	// support (pilot/pkg/features/ambient.go), including the istio-east-west
	// GatewayClass.
	AmbientMultiNetworkEnv = "AMBIENT_ENABLE_MULTI_NETWORK"
	// DataplaneModeLabel on a namespace puts its pods in ambient mode.
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// GlobalServiceLabel makes a service reachable from the other clusters
	// of an ambient mesh (the ambient profile's serviceScopeConfigs select
	// it); unlabelled services stay local.
	GlobalServiceLabel = "istio.io/global"
)

// AmbientProblem is one thing the Istio of AmbientIstio does not support
// in ambient mode. Field names the spec field at fault (topology,
// dataplaneMode, network or apiServerAccess), of Cluster ("" for the mesh).
type AmbientProblem struct {
	Cluster string
	Field   string
	Message string
}

func (p AmbientProblem) Error() string { return p.Message }

// AmbientProblems are what the Istio of AmbientIstio does not support in
// ambient mode, each naming the clusters and the reason:
//   - ambient multicluster runs primaries only: no primary-remote, no
//     external control plane;
//   - a mesh that mixes sidecar and ambient clusters: sidecars skip
//     east-west gateways that listen only for HBONE and ztunnels skip those
//     without HBONE (pilot/pkg/xds/endpoints/ep_filters.go,
//     selectNetworkGateways), so neither reaches the other's network, and
//     on one network cross-cluster ambient is untested;
//   - ambient clusters sharing a network (multicluster single-network
//     ambient is untested and may be broken; only multi-network is
//     supported);
//   - an ambient cluster read through its gateway: the ambient east-west
//     gateway carries double HBONE only.
//
// Members' modes are taken as given: "" is sidecar.
func AmbientProblems(t Topology, members []Member) []AmbientProblem {
	var ambient, sidecar []string
	byNetwork := map[string][]string{}
	for _, m := range members {
		if m.Ambient() {
			ambient = append(ambient, m.Name)
			byNetwork[m.Network] = append(byNetwork[m.Network], m.Name)
		} else {
			sidecar = append(sidecar, m.Name)
		}
	}
	if len(ambient) == 0 {
		return nil
	}
	var out []AmbientProblem
	if t != MultiPrimary {
		out = append(out, AmbientProblem{Field: "topology", Message: fmt.Sprintf(
			"topology %s does not support dataplaneMode ambient (clusters %s) as of Istio %s: ambient multicluster runs only primary clusters (no remote or external istiod); use multi-primary or sidecar mode",
			t, strings.Join(ambient, ", "), AmbientIstio)})
	}
	if len(sidecar) > 0 {
		// Pointed at the first cluster that differs from the first one.
		at := sidecar[0]
		if !members[0].Ambient() {
			at = ambient[0]
		}
		out = append(out, AmbientProblem{Cluster: at, Field: "dataplaneMode", Message: fmt.Sprintf(
			"clusters %s are sidecar and %s ambient: a mesh mixing the two is not supported as of Istio %s (sidecars do not use the ambient HBONE east-west gateway and ztunnels do not use the classic 15443 one, so neither reaches the other's network); give every cluster the same dataplaneMode",
			strings.Join(sidecar, ", "), strings.Join(ambient, ", "), AmbientIstio)})
	}
	nets := make([]string, 0, len(byNetwork))
	for n := range byNetwork {
		nets = append(nets, n)
	}
	sort.Strings(nets)
	for _, n := range nets {
		if cs := byNetwork[n]; len(cs) > 1 {
			name := fmt.Sprintf("network %q", n)
			if n == "" {
				name = "one (unnamed) network"
			}
			out = append(out, AmbientProblem{Cluster: cs[1], Field: "network", Message: fmt.Sprintf(
				"ambient clusters %s share %s: multicluster ambient on one network is untested as of Istio %s (only multi-network is supported); give each cluster its own network",
				strings.Join(cs, ", "), name, AmbientIstio)})
		}
	}
	for _, m := range members {
		if m.Ambient() && m.APIServerAccess == APIServerViaGateway {
			out = append(out, AmbientProblem{Cluster: m.Name, Field: "apiServerAccess", Message: fmt.Sprintf(
				"cluster %s: apiServerAccess gateway is not supported in ambient mode: the ambient east-west gateway carries only double HBONE as of Istio %s; use apiServerAccess direct",
				m.Name, AmbientIstio)})
		}
	}
	return out
}
