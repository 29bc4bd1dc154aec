package server

import (
	"fmt"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/server/spec"
)

// caNamespace is where cluster name's intermediate CA is used: the
// namespace of the istiod in that cluster that signs the mesh's workload
// certificates with it. A control-plane cluster's is its external istiod,
// which signs for its data-plane clusters; a data-plane cluster runs no
// istiod and holds no cacerts (ok is false). A remote holds one as Istio's
// guides have every cluster hold one.
func caNamespace(m *spec.Mesh, name string) (ns string, ok bool) {
	switch roleOf(m, name) {
	case federation.RoleDataPlane:
		return "", false
	case federation.RoleControlPlane:
		return deploy.DefaultExternalNamespace, true
	}
	return m.Spec.ControlPlaneNamespace, true
}

// errNoIntermediate is the answer to a CA operation on a data-plane cluster.
func errNoIntermediate(cluster string) error {
	return fmt.Errorf("cluster %s is a data-plane cluster: it holds no intermediate (its control-plane cluster's istiod signs for it)", cluster)
}

func roleOf(m *spec.Mesh, name string) federation.Role {
	for _, mem := range m.Members() {
		if mem.Name == name {
			return mem.Role
		}
	}
	return ""
}

// planned is the deploy engine's plan of every cluster of m, by name: the
// namespace that carries its network label (Namespace) and its gateway, if
// any (east-west, or a control-plane cluster's ingress). A spec that does
// not plan is refused before status or check get here; its clusters get the
// control-plane namespace and no gateway.
func planned(m *spec.Mesh) map[string]gateways.ClusterPlan {
	out := map[string]gateways.ClusterPlan{}
	opts := DeployOptions(m)
	opts.AllowPendingAddress = true
	if plans, err := gateways.Plan(m.Spec.Topology, m.Members(), opts, nil); err == nil {
		for _, p := range plans {
			out[p.Cluster] = p
		}
	}
	for _, c := range m.Spec.Clusters {
		if _, ok := out[c.Name]; !ok {
			out[c.Name] = gateways.ClusterPlan{ClusterPlan: deploy.ClusterPlan{Cluster: c.Name, Namespace: m.Spec.ControlPlaneNamespace}}
		}
	}
	return out
}
