package server

import (
	"context"
	"fmt"
	"sort"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/server/spec"
)

// plan is one request's mesh spec compiled once: the layout (per cluster its
// role, namespaces, who serves it, whom it reads and is read by, its
// gateway) and each subsystem's settings. The steps of apply, status, check
// and verify read it; none of them sees the spec or derives the topology.
type plan struct {
	// Name is the mesh's metadata.name; Hash the spec's (the journal's key).
	Name, Hash  string
	MeshID      string
	TrustDomain string
	Topology    deploy.Topology
	Layout      *deploy.Layout
	// Clusters say how to reach each cluster (kubeconfig, context, API
	// server address), in spec order.
	Clusters   []spec.Cluster
	Deploy     deploy.Options
	Federation federation.Options
	PKI        pkiPlan
}

// pkiPlan is the PKI's part of the plan.
type pkiPlan struct {
	Mode spec.PKIMode
	// Config are the key algorithm and lifetimes of the root and intermediates.
	Config pki.Config
	// Root, when set, is the user's root to import.
	Root *spec.RootSource
	// IssuerRef, when set, is the cert-manager issuer that signs the
	// intermediates instead of the hub.
	IssuerRef *spec.IssuerRef
	// CSRAgent, when set, runs the istio-csr style signer in each cluster.
	CSRAgent *spec.CSRAgent
}

// compile validates m and compiles it into the plan every step reads.
func compile(m *spec.Mesh) (*plan, error) {
	hash := m.Hash()
	if !m.ValidatedAs(hash) {
		if err := m.Validate(); err != nil {
			return nil, err
		}
	}
	p := &plan{
		Name: m.Metadata.Name, Hash: hash, MeshID: m.Spec.MeshID, TrustDomain: m.Spec.TrustDomain, Topology: m.Spec.Topology,
		Clusters:   m.Spec.Clusters,
		Deploy:     deployOptions(m),
		Federation: federationOptions(m),
		PKI: pkiPlan{
			Mode: m.Spec.PKI.Mode,
			Config: pki.Config{
				KeyAlgorithm:         pki.KeyAlgorithm(m.Spec.PKI.KeyAlgorithm),
				RootLifetime:         m.Spec.PKI.RootTTL.Duration,
				IntermediateLifetime: m.Spec.PKI.IntermediateTTL.Duration,
			},
			Root:     m.Spec.PKI.Root,
			CSRAgent: csrAgentOf(m),
		},
	}
	if cm := m.Spec.PKI.CertManager; cm != nil {
		p.PKI.IssuerRef = cm.IssuerRef
	}
	l, err := deploy.Compile(m.Spec.Topology, m.Members(), p.Deploy.Namespaces())
	if err != nil {
		return nil, fmt.Errorf("mesh %s: %w", m.Metadata.Name, err)
	}
	p.Layout = l
	return p, nil
}

// planOf compiles m, or when m is nil the spec of the last apply.
func (h *Hub) planOf(ctx context.Context, m *spec.Mesh) (*plan, error) {
	m, err := h.meshOrStored(ctx, m)
	if err != nil {
		return nil, err
	}
	return compile(m)
}

// clusterOrError returns how to reach the named cluster, or an error that
// lists the mesh's clusters.
func (p *plan) clusterOrError(name string) (spec.Cluster, error) {
	if c, ok := p.cluster(name); ok {
		return c, nil
	}
	names := make([]string, 0, len(p.Clusters))
	for _, c := range p.Clusters {
		names = append(names, c.Name)
	}
	sort.Strings(names)
	return spec.Cluster{}, fmt.Errorf("cluster %q is not in mesh %s (clusters: %v)", name, p.Name, names)
}

// PlanControlPlanes compiles m and plans every cluster's control-plane
// objects without contacting any (flotilla apply --render): a gateway
// address only the cluster knows is PendingAddress.
func PlanControlPlanes(m *spec.Mesh) ([]gateways.ClusterPlan, error) {
	p, err := compile(m)
	if err != nil {
		return nil, err
	}
	opts := p.Deploy
	opts.AllowPendingAddress = true
	return gateways.Plan(p.Layout, opts, nil)
}

// deployOptions are the control-plane settings of m.
func deployOptions(m *spec.Mesh) deploy.Options {
	o := deploy.Options{
		MeshID:      m.Spec.MeshID,
		TrustDomain: m.Spec.TrustDomain,
		Version:     istioVersion(m),
		Namespace:   m.Spec.ControlPlaneNamespace,
		Exposure:    map[string]gateways.Exposure{},
	}
	if csrAgentOf(m) != nil {
		// istiod's own CA off; istiod and the proxies ask the csr-agent.
		o.Values = csragent.IstioValues(m.Spec.ControlPlaneNamespace)
	}
	for _, c := range m.Spec.Clusters {
		e := gateways.Exposure{Type: coreServiceType(c.Gateway.ServiceType), Address: c.Gateway.Address}
		if c.Gateway.NodePort != 0 {
			e.NodePorts = map[string]int32{"tls": c.Gateway.NodePort}
		}
		o.Exposure[c.Name] = e
	}
	return o
}

// csrAgentOf returns the csr-agent settings when m runs the istio-csr style signer.
func csrAgentOf(m *spec.Mesh) *spec.CSRAgent {
	if m.Spec.PKI.Mode != spec.PKICertManager || m.Spec.PKI.CertManager == nil {
		return nil
	}
	return m.Spec.PKI.CertManager.CSRAgent
}

func federationOptions(m *spec.Mesh) federation.Options {
	return federation.Options{
		Namespace:     m.Spec.ControlPlaneNamespace,
		AllowLoopback: m.Spec.AllowLoopbackAPIServers,
		Token: federation.TokenOptions{
			Lifetime: m.Spec.Federation.TokenTTL.Duration,
			Legacy:   m.Spec.Federation.LegacyTokenSecret,
		},
	}
}

func istioVersion(m *spec.Mesh) string {
	if v := m.Spec.Istio.Version; v != "" {
		return v
	}
	return DefaultIstioVersion
}

// caNamespace is where cluster name's intermediate CA is used: the
// namespace of the istiod in that cluster that signs the mesh's workload
// certificates with it (deploy.Placement.CANamespace). A data-plane
// cluster runs no istiod and holds no cacerts (ok is false).
func (p *plan) caNamespace(name string) (ns string, ok bool) {
	c, ok := p.Layout.Cluster(name)
	if !ok || !c.HoldsCA() {
		return "", false
	}
	return c.CANamespace, true
}

// role is cluster name's role ("" when it is not in the mesh).
func (p *plan) role(name string) deploy.Role {
	c, _ := p.Layout.Cluster(name)
	return c.Role
}

// cluster returns how to reach the named cluster.
func (p *plan) cluster(name string) (spec.Cluster, bool) {
	for _, c := range p.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return spec.Cluster{}, false
}

// errNoIntermediate is the answer to a CA operation on a data-plane cluster.
func errNoIntermediate(cluster string) error {
	return fmt.Errorf("cluster %s is a data-plane cluster: it holds no intermediate (its control-plane cluster's istiod signs for it)", cluster)
}

// planned is the plan of every cluster of the mesh, by name, without the
// gateway addresses only the clusters know: the namespace that carries its
// network label (Namespace) and its gateway, if any.
func (p *plan) planned() map[string]gateways.ClusterPlan {
	out := map[string]gateways.ClusterPlan{}
	opts := p.Deploy
	opts.AllowPendingAddress = true
	plans, _ := gateways.Plan(p.Layout, opts, nil)
	for _, cp := range plans {
		out[cp.Cluster] = cp
	}
	for _, c := range p.Layout.Clusters {
		if _, ok := out[c.Name]; !ok {
			out[c.Name] = gateways.ClusterPlan{ClusterPlan: deploy.ClusterPlan{Cluster: c.Name, Role: c.Role, Network: c.Network, Namespace: c.Namespace}}
		}
	}
	return out
}
