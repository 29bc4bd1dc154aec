// Package deploy is the floor every flotilla subsystem stands on. It owns
// the topology vocabulary (Topology, Role, Member, ServedBy), the mesh's
// Layout compiled once from it (per cluster: role, who serves it, its
// control-plane, CA and remote-secret namespaces, whom it reads and is read
// by, which gateway it runs and what that gateway exposes), the plan of
// objects per cluster built from the layout, the Istio
// control-plane objects each role needs (Sail Operator Istio and IstioCNI,
// or Helm values), the namespaces that carry the network label, and the
// write path (ApplyObjects over deploy/kube's connections and server-side
// apply). It imports no other flotilla package but deploy/kube: pki,
// federation and gateways build on it, and gateways joins its plans with
// the gateway objects into the per-cluster rollout.
package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Default namespaces and timeout.
const (
	DefaultNamespace         = "istio-system"
	DefaultExternalNamespace = "external-istiod"
	DefaultCNINamespace      = "istio-cni"
	// DefaultTrustDomain is Istio's trust domain when meshConfig names none.
	DefaultTrustDomain    = "cluster.local"
	DefaultAddressTimeout = 2 * time.Minute
)

// Options are the mesh-wide settings of a plan.
type Options struct {
	// BeforeControlPlane, when set, runs before a cluster's control-plane
	// objects (the Istio resource that starts istiod) are written; an error
	// stops the apply. The hub waits there for the cluster's cacerts.
	BeforeControlPlane func(ctx context.Context, cluster string) error
	// BeforeControlPlanes, when set, runs once after the namespaces and
	// gateways are written and their addresses known, before any Sail
	// resource; an error stops the apply. The hub installs the remote
	// secrets there: an external istiod must find its istio-kubeconfig when
	// it starts (the chart mounts it as an optional volume, read once), and
	// a serving istiod patches its remotes' injection webhooks only once it
	// reads them, which their gateways' injection waits for.
	BeforeControlPlanes func(ctx context.Context) error
	// MeshID is global.meshID.
	MeshID string
	// TrustDomain is meshConfig.trustDomain of every Istio resource: the
	// SPIFFE trust domain istiod issues identities in. "" and
	// DefaultTrustDomain write nothing, which Istio reads as cluster.local.
	TrustDomain string
	// Version is the Istio version, Sail's spec.version ("1.30.3" or "v1.30.3").
	Version string
	// Namespace is the control-plane namespace of primaries, remotes and
	// control-plane clusters; "" is istio-system.
	Namespace string
	// ExternalNamespace holds an external control plane, on the control-plane
	// cluster and on its data-plane clusters; "" is external-istiod.
	ExternalNamespace string
	// CNINamespace is IstioCNI's namespace; "" is istio-cni.
	CNINamespace string
	// ZTunnelNamespace is the ZTunnel's namespace on ambient clusters; ""
	// is ztunnel.
	ZTunnelNamespace string
	// NoCNI leaves out IstioCNI (and its namespace) on sidecar clusters.
	// OpenShift needs it; upstream Kubernetes can run sidecars without it.
	// Ambient clusters always run it: it redirects pods to ztunnel.
	NoCNI bool
	// Exposure says how each cluster's gateway Service is reached, by
	// cluster name; missing means LoadBalancer.
	Exposure map[string]Exposure
	// Values are merged into spec.values of every Istio resource (after
	// flotilla's own values, so they win). The cert-manager mode sets
	// global.caAddress and pilot.env.ENABLE_CA_SERVER here.
	Values map[string]any
	// ClusterValues are merged after Values, for one cluster's Istio resources.
	ClusterValues map[string]map[string]any
	// AllowPendingAddress puts PendingAddress where a gateway address is not
	// known yet instead of failing (dry runs; renders of a first install).
	AllowPendingAddress bool
	// AddressTimeout bounds each wait for a gateway address; 0 is 2m.
	AddressTimeout time.Duration
}

// Namespaces are the namespaces of o, which the mesh's layout is compiled
// with (Compile); plans read them from the layout.
func (o Options) Namespaces() Namespaces {
	return Namespaces{ControlPlane: o.Namespace, External: o.ExternalNamespace}
}

func (o Options) ControlPlaneNamespace() string { return or(o.Namespace, DefaultNamespace) }
func (o Options) ExternalIstiodNamespace() string {
	return or(o.ExternalNamespace, DefaultExternalNamespace)
}
func (o Options) cniNamespace() string { return or(o.CNINamespace, DefaultCNINamespace) }
func (o Options) ztunnelNamespace() string {
	return or(o.ZTunnelNamespace, DefaultZTunnelNamespace)
}

// AddressWait bounds each wait for a gateway address (AddressTimeout, or
// DefaultAddressTimeout).
func (o Options) AddressWait() time.Duration {
	if o.AddressTimeout <= 0 {
		return DefaultAddressTimeout
	}
	return o.AddressTimeout
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// GatewayKind is the gateway a cluster runs.
type GatewayKind string

const (
	// NoGateway: single-network clusters that expose nothing.
	NoGateway GatewayKind = ""
	// EastWestGateway carries cross-network traffic and exposes a primary's
	// istiod to its remotes.
	EastWestGateway GatewayKind = "east-west"
	// IngressGateway fronts an external control plane on a control-plane
	// cluster.
	IngressGateway GatewayKind = "ingress"
	// AmbientEastWestGateway carries an ambient cluster's cross-network
	// traffic: a Gateway API Gateway of class istio-east-west whose
	// deployment istiod makes (double HBONE on 15008).
	AmbientEastWestGateway GatewayKind = "ambient-east-west"
)

// ClusterPlan is what one cluster needs of deploy, in apply order: Setup,
// then (package gateways) its gateway, then ControlPlane. The gateway
// fields say which gateway the cluster runs and what it exposes; gateways
// builds the objects from them.
type ClusterPlan struct {
	Cluster string
	Role    Role
	Network string
	// DataplaneMode is the cluster's, defaulted (sidecar or ambient).
	DataplaneMode DataplaneMode
	// Namespace is the cluster's control-plane namespace (the one labelled
	// with its network).
	Namespace string
	// ExternalNamespace holds the external istiod on a control-plane
	// cluster (and is the control-plane namespace of its data planes).
	ExternalNamespace string
	// GatewayKind is the gateway the cluster runs; Exposure how its Service
	// is reached.
	GatewayKind GatewayKind
	Exposure    Exposure
	// CrossNetwork: the east-west gateway carries cross-network traffic on
	// 15443 (the mesh spans networks).
	CrossNetwork bool
	// ExposesIstiod: the east-west gateway exposes this primary's istiod to
	// the remotes it serves.
	ExposesIstiod bool
	// ExposesAPIServer: the east-west gateway passes TLS through to the
	// cluster's API server on PortAPIServer.
	ExposesAPIServer bool
	// Setup are the namespaces.
	Setup []kube.Object
	// ControlPlane are the Sail IstioCNI, ZTunnel (ambient) and Istio
	// resources.
	ControlPlane []kube.Object
	// AddressOf names the cluster whose gateway address ControlPlane embeds
	// ("" for none; the cluster itself for a control-plane cluster).
	AddressOf string
	// Pending reports that ControlPlane carries PendingAddress.
	Pending bool
}

// Objects are deploy's objects of the plan in apply order.
func (p ClusterPlan) Objects() []kube.Object {
	out := append([]kube.Object(nil), p.Setup...)
	return append(out, p.ControlPlane...)
}

// AddressNeededError: a plan needs a gateway address nobody knows yet.
type AddressNeededError struct {
	Cluster, Of string
}

func (e *AddressNeededError) Error() string {
	return fmt.Sprintf("%s: its Istio resources need the gateway address of %s, which is not known yet: apply %s's gateway and wait for its address first, or give it a fixed address",
		e.Cluster, e.Of, e.Of)
}

// Plan returns the plan of every cluster of the mesh, in spec order.
// addresses holds the known gateway addresses by cluster (from
// WaitForAddress or LookupAddress); a fixed Exposure.Address of a non-
// LoadBalancer gateway needs no entry.
func Plan(l *Layout, opts Options, addresses map[string]string) ([]ClusterPlan, error) {
	plans := make([]ClusterPlan, 0, len(l.Clusters))
	var errs []error
	for _, m := range l.Clusters {
		p, err := l.plan(m, opts, addresses)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plans = append(plans, p)
	}
	return plans, errors.Join(errs...)
}

// PlanCluster returns the plan of the named cluster.
func PlanCluster(l *Layout, cluster string, opts Options, addresses map[string]string) (ClusterPlan, error) {
	m, ok := l.Cluster(cluster)
	if !ok {
		return ClusterPlan{}, fmt.Errorf("cluster %s is not a member of the mesh", cluster)
	}
	return l.plan(m, opts, addresses)
}

type planner struct {
	l    *Layout
	m    Placement
	opts Options
	out  ClusterPlan
	err  error
}

func (l *Layout) plan(m Placement, opts Options, addresses map[string]string) (ClusterPlan, error) {
	if opts.MeshID == "" {
		return ClusterPlan{}, errors.New("no mesh ID")
	}
	if opts.Version == "" {
		return ClusterPlan{}, errors.New("no Istio version")
	}
	p := &planner{l: l, m: m, opts: opts}
	p.out = ClusterPlan{Cluster: m.Name, Role: m.Role, Network: m.Network, DataplaneMode: m.DataplaneMode, Namespace: m.Namespace,
		ExternalNamespace: l.Namespaces.External, Exposure: opts.Exposure[m.Name],
		GatewayKind: m.GatewayKind, CrossNetwork: m.CrossNetwork, ExposesIstiod: m.ExposesIstiod, ExposesAPIServer: m.ExposesAPIServer}
	if err := opts.Exposure[m.Name].Validate(); err != nil {
		return ClusterPlan{}, fmt.Errorf("%s: gateway: %w", m.Name, err)
	}

	// Setup: the control-plane namespace carries the network label; a
	// remote's also names its primary.
	var annotations map[string]string
	if m.Role == RoleRemote {
		annotations = map[string]string{ControlPlaneClustersAnnotation: m.ServedBy}
	}
	// An external istiod takes its config cluster's name as its cluster ID
	// and manages the other data-plane clusters whose namespace names it.
	if m.Role == RoleDataPlane && m.ConfigCluster != m.Name {
		annotations = map[string]string{ControlPlaneClustersAnnotation: m.ConfigCluster}
	}
	p.setup(NamespaceObject(p.out.Namespace, m.Network, annotations))
	if m.Role == RoleControlPlane {
		p.setup(NamespaceObject(l.Namespaces.External, "", nil))
	}
	cni := (!opts.NoCNI || m.Ambient()) && m.Role != RoleControlPlane
	if cni {
		p.setup(NamespaceObject(opts.cniNamespace(), "", nil))
	}
	if m.Ambient() {
		p.setup(NamespaceObject(opts.ztunnelNamespace(), "", nil))
	}

	// Control plane, in the order the Sail guide installs ambient: CNI,
	// ZTunnel, Istio.
	if cni {
		p.out.ControlPlane = append(p.out.ControlPlane, kube.Custom(p.istioCNI()))
	}
	if m.Ambient() {
		p.controlPlane(p.ztunnel())
	}
	switch {
	case m.Role == RolePrimary && m.Ambient():
		p.controlPlane(p.istio(IstioName, p.out.Namespace, AmbientProfile, p.ambientValues()))
	case m.Role == RolePrimary:
		p.controlPlane(p.istio(IstioName, p.out.Namespace, "", p.primaryValues()))
	case m.Role == RoleRemote:
		addr := p.address(m.ServedBy, addresses)
		p.controlPlane(p.istio(IstioName, p.out.Namespace, "remote", p.remoteValues(addr)))
	case m.Role == RoleControlPlane:
		// The control-plane cluster's own control plane injects and
		// configures the ingress gateway.
		var values map[string]any
		if m.Network != "" {
			values = map[string]any{"global": map[string]any{"network": m.Network}}
		}
		p.controlPlane(p.istio(IstioName, p.out.Namespace, "", values))
		addr := p.address(m.Name, addresses)
		p.controlPlane(p.istio(ExternalIstiodName, l.Namespaces.External, "empty", p.externalIstiodValues(addr, m.ConfigCluster)))
	case m.Role == RoleDataPlane:
		addr := p.address(m.ServedBy, addresses)
		p.controlPlane(p.istio(ExternalIstiodName, p.out.Namespace, "remote", p.dataPlaneValues(addr, m.ConfigCluster == m.Name)))
	}
	if p.err != nil {
		return ClusterPlan{}, p.err
	}
	return p.out, nil
}

func (p *planner) fail(err error) {
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%s: %w", p.m.Name, err)
	}
}

func (p *planner) setup(o kube.Object, err error) {
	p.fail(err)
	p.out.Setup = append(p.out.Setup, o)
}

func (p *planner) controlPlane(u *unstructured.Unstructured) {
	// Caller-supplied values may hold Go types unstructured cannot copy
	// (int, []string): round-trip them through JSON.
	data, err := json.Marshal(u.Object)
	if err == nil {
		u = &unstructured.Unstructured{}
		err = json.Unmarshal(data, &u.Object)
	}
	if err != nil {
		p.fail(fmt.Errorf("encode Istio values: %w", err))
		return
	}
	p.out.ControlPlane = append(p.out.ControlPlane, kube.Custom(u))
}

// address is the gateway address of cluster of: known, fixed, pending or an
// AddressNeededError.
func (p *planner) address(of string, addresses map[string]string) string {
	p.out.AddressOf = of
	if a := addresses[of]; a != "" {
		return a
	}
	if exp := p.opts.Exposure[of]; exp.Address != "" && exp.ServiceType() != "LoadBalancer" {
		return exp.Address
	}
	if p.opts.AllowPendingAddress {
		p.out.Pending = true
		return PendingAddress
	}
	if p.err == nil {
		p.err = &AddressNeededError{Cluster: p.m.Name, Of: of}
	}
	return ""
}
