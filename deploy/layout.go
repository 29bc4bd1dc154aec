package deploy

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Layout is a mesh's topology compiled once: per cluster its role, the
// namespaces that hold its control plane, its CA material and its remote
// secrets, which cluster serves it, which clusters it reads and is read by,
// and which gateway it runs. Every step of flotilla reads it; none derives
// the topology again.
type Layout struct {
	Topology Topology
	// MultiNetwork: the clusters that run workloads are on more than one
	// network, so cross-network traffic goes through east-west gateways.
	MultiNetwork bool
	// Clusters are the placements in spec order.
	Clusters []Placement
	// Namespaces are the mesh's namespaces, defaults applied.
	Namespaces Namespaces
	byName     map[string]int
	// links are sorted by reader, then target.
	links []Link
}

// Namespaces name the mesh's namespaces; "" takes the default.
type Namespaces struct {
	// ControlPlane is the control-plane namespace of primaries, remotes and
	// control-plane clusters (istio-system).
	ControlPlane string
	// External holds an external control plane, on the control-plane
	// cluster and on its data-plane clusters (external-istiod).
	External string
}

// CAOf is the namespace that holds the cacerts of a cluster with role r
// (Placement.CANamespace): a control-plane cluster's external istiod signs
// with it; a data-plane cluster holds none (""); a remote holds one as
// Istio's guides have every cluster hold one.
func (n Namespaces) CAOf(r Role) string {
	n = n.withDefaults()
	switch r {
	case RoleDataPlane:
		return ""
	case RoleControlPlane:
		return n.External
	}
	return n.ControlPlane
}

func (n Namespaces) withDefaults() Namespaces {
	n.ControlPlane = or(n.ControlPlane, DefaultNamespace)
	n.External = or(n.External, DefaultExternalNamespace)
	return n
}

// Placement is one cluster's place in the mesh.
type Placement struct {
	Member
	// ServedBy is the cluster whose istiod serves this one (itself for a
	// primary or control-plane cluster).
	ServedBy string
	// Serves are the remotes or data-plane clusters this cluster's istiod
	// serves, in spec order.
	Serves []string
	// ConfigCluster is the cluster whose API server holds the external
	// istiod's configuration: on a control-plane cluster, for its own
	// external istiod; on a data-plane cluster, for the istiod serving it.
	ConfigCluster string
	// Namespace is the control-plane namespace, the one labelled with the
	// cluster's network (a data-plane cluster's is the external one).
	Namespace string
	// CANamespace holds the cluster's cacerts: the namespace of the istiod
	// in this cluster that signs with its intermediate. "" for a data-plane
	// cluster, which runs no istiod (its control-plane cluster's signs).
	CANamespace string
	// Istio is the Sail Istio resource whose values configure the cluster's
	// workloads (a data-plane cluster's is the external istiod's remote).
	Istio string
	// SecretNamespace holds the secrets through which this cluster's
	// istiod reads other clusters ("" when it reads none).
	SecretNamespace string
	// Reads are the links whose secret this cluster holds.
	Reads []Link
	// ReadBy are the clusters that hold a secret reading this one, sorted.
	ReadBy []string
	// GatewayKind is the gateway the cluster runs.
	GatewayKind GatewayKind
	// CrossNetwork: the east-west gateway carries cross-network traffic on
	// 15443 (the mesh spans networks).
	CrossNetwork bool
	// ExposesIstiod: the east-west gateway exposes this primary's istiod to
	// the remotes it serves.
	ExposesIstiod bool
	// ExposesAPIServer: the east-west gateway passes TLS through to this
	// cluster's API server (APIServerAccess gateway), and the secrets that
	// read it name the gateway.
	ExposesAPIServer bool
}

// HoldsCA reports whether the cluster holds an intermediate CA (cacerts).
func (p Placement) HoldsCA() bool { return p.CANamespace != "" }

// LinkKind is the type of secret a link installs, as istioctl's
// create-remote-secret --type names them.
type LinkKind string

const (
	// LinkRemote is an istio-remote-secret-<cluster>: istiod discovers the
	// target's services and endpoints through the target's reader account.
	LinkRemote LinkKind = "remote"
	// LinkConfig is the istio-kubeconfig secret of an external istiod: the
	// target is its config cluster, read and written with istiod's own account.
	LinkConfig LinkKind = "config"
)

// Link says that istiod in Reader reads Target through a secret of Kind held in Reader.
type Link struct {
	Reader string
	Target string
	Kind   LinkKind
}

func (l Link) String() string { return fmt.Sprintf("%s -> %s (%s)", l.Reader, l.Target, l.Kind) }

// Cluster returns the placement of the named cluster.
func (l *Layout) Cluster(name string) (Placement, bool) {
	i, ok := l.byName[name]
	if !ok {
		return Placement{}, false
	}
	return l.Clusters[i], true
}

// Members are the clusters as the topology sees them, in spec order (roles
// defaulted).
func (l *Layout) Members() []Member {
	out := make([]Member, len(l.Clusters))
	for i, p := range l.Clusters {
		out[i] = p.Member
	}
	return out
}

// Links are every secret of the mesh: who reads whom and how, sorted by
// reader, then target.
//   - multi-primary and primary-remote: every primary reads every other
//     cluster of the mesh (with one primary, that is one secret per remote;
//     with several, each also needs the others' endpoints);
//   - external control plane: each control-plane cluster holds a config
//     secret for the first data-plane cluster it serves (its config cluster,
//     in spec order) and a remote secret for every further one, which is how
//     istioctl attaches additional remotes to one external istiod.
//
// The same links hold for single and multi network meshes: networks change
// gateways, not who reads whom.
func (l *Layout) Links() []Link { return append([]Link(nil), l.links...) }

// Validate checks a topology and its clusters before anything is planned or
// written:
//   - the topology is known and every role belongs to it ("" means primary);
//   - cluster names are unique DNS-1123 labels;
//   - every remote has a primary and every data-plane cluster a control-plane
//     cluster (ServedBy), and every control-plane cluster serves at
//     least one data-plane cluster;
//   - networks are valid label values, and either every cluster names its
//     network or none does.
//
// No topology needs distinct networks: Istio supports several clusters on one
// network in every topology, and flotilla then routes between them directly
// and deploys an east-west gateway only where istiod is exposed. What is
// rejected is a spec that mixes the two assumptions: some clusters name a
// network and others leave it empty, which would put the unnamed ones on
// Istio's default network "" and make their traffic to named networks go
// through gateways they do not have.
func Validate(t Topology, members []Member) error {
	_, err := Compile(t, members, Namespaces{})
	return err
}

// Compile validates a topology (as Validate) and compiles it into the
// mesh's layout.
func Compile(t Topology, members []Member, ns Namespaces) (*Layout, error) {
	if !t.Valid() {
		names := make([]string, 0, 3)
		for _, v := range Topologies() {
			names = append(names, string(v))
		}
		return nil, fmt.Errorf("unknown topology %q (want one of %s)", t, strings.Join(names, ", "))
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("topology %s: no clusters", t)
	}
	l := &Layout{Topology: t, Namespaces: ns.withDefaults(), byName: map[string]int{}}
	var errs []error
	named, unnamed := []string{}, []string{}
	networks := map[string]bool{}
	var valid []Member
	for _, m := range members {
		if m.Role == "" {
			m.Role = RolePrimary
		}
		access, err := normalizeAccess(m)
		if err != nil {
			errs = append(errs, err)
		}
		m.APIServerAccess = access
		switch {
		case m.DataplaneMode == "":
			m.DataplaneMode = DataplaneSidecar
		case !m.DataplaneMode.Valid():
			errs = append(errs, fmt.Errorf("cluster %s: dataplaneMode %q is not one of sidecar, ambient", m.Name, m.DataplaneMode))
		}
		if msgs := validation.IsDNS1123Label(m.Name); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("cluster %q: invalid name: %s", m.Name, strings.Join(msgs, "; ")))
			continue
		}
		if _, dup := l.byName[m.Name]; dup {
			errs = append(errs, fmt.Errorf("cluster %s: listed twice", m.Name))
			continue
		}
		if !roleIn(m.Role, t.Roles()) {
			errs = append(errs, fmt.Errorf("cluster %s: role %q is not part of topology %s (roles: %s)", m.Name, m.Role, t, roleList(t.Roles())))
		}
		if m.Network == "" {
			unnamed = append(unnamed, m.Name)
		} else {
			named = append(named, m.Name)
			if msgs := validation.IsValidLabelValue(m.Network); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("cluster %s: network %q is not a valid label value: %s", m.Name, m.Network, strings.Join(msgs, "; ")))
			}
			if m.Role != RoleControlPlane {
				networks[m.Network] = true
			}
		}
		l.byName[m.Name] = len(valid)
		valid = append(valid, m)
	}
	if len(named) > 0 && len(unnamed) > 0 {
		errs = append(errs, fmt.Errorf("clusters %s name a network and %s do not: name every cluster's network (clusters on one network share its name) or none",
			strings.Join(named, ", "), strings.Join(unnamed, ", ")))
	}
	for _, p := range AmbientProblems(t, valid) {
		errs = append(errs, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	l.Clusters = make([]Placement, len(valid))
	for i, m := range valid {
		l.Clusters[i].Member = m
		by, err := ServedBy(t, m, valid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.Clusters[i].ServedBy = by
		if by != m.Name {
			j := l.byName[by]
			l.Clusters[j].Serves = append(l.Clusters[j].Serves, m.Name)
		}
	}
	if want := servingRole(t); !slices.ContainsFunc(valid, func(m Member) bool { return m.Role == want }) {
		// Said once for the mesh, besides each cluster left without one.
		errs = append([]error{fmt.Errorf("topology %s: no %s cluster", t, want)}, errs...)
	}
	for _, p := range l.Clusters {
		if p.Role == RoleControlPlane && len(p.Serves) == 0 {
			errs = append(errs, fmt.Errorf("cluster %s: control-plane cluster serves no data-plane cluster", p.Name))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	l.MultiNetwork = len(networks) > 1
	l.links = l.compileLinks()
	for i := range l.Clusters {
		l.place(&l.Clusters[i])
	}
	for _, p := range l.Clusters {
		if p.APIServerAccess == APIServerViaGateway && len(p.ReadBy) == 0 {
			errs = append(errs, fmt.Errorf("cluster %s: apiServerAccess gateway, but no cluster of topology %s reads it (only the clusters remote secrets read expose their API server)", p.Name, l.Topology))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return l, nil
}

// compileLinks decides which cluster holds a secret for which other (Links).
func (l *Layout) compileLinks() []Link {
	var out []Link
	switch l.Topology {
	case MultiPrimary, PrimaryRemote:
		for _, r := range l.Clusters {
			if r.Role != RolePrimary {
				continue
			}
			for _, o := range l.Clusters {
				if o.Name != r.Name {
					out = append(out, Link{Reader: r.Name, Target: o.Name, Kind: LinkRemote})
				}
			}
		}
	case ExternalControlPlane:
		for _, cp := range l.Clusters {
			for i, dp := range cp.Serves {
				kind := LinkRemote
				if i == 0 {
					kind = LinkConfig
				}
				out = append(out, Link{Reader: cp.Name, Target: dp, Kind: kind})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Reader != b.Reader {
			return a.Reader < b.Reader
		}
		return a.Target < b.Target
	})
	return out
}

// place fills in what follows from the cluster's role and the links.
func (l *Layout) place(p *Placement) {
	ns := l.Namespaces
	p.Namespace = ns.ControlPlane
	if p.Role == RoleDataPlane {
		p.Namespace = ns.External
	}
	p.CANamespace = ns.CAOf(p.Role)
	p.Istio = IstioName
	if p.Role == RoleDataPlane {
		p.Istio = ExternalIstiodName
	}
	switch p.Role {
	case RoleControlPlane:
		p.ConfigCluster = l.configCluster(p.Name)
	case RoleDataPlane:
		p.ConfigCluster = l.configCluster(p.ServedBy)
	}
	for _, k := range l.links {
		if k.Reader == p.Name {
			p.Reads = append(p.Reads, k)
		}
		if k.Target == p.Name {
			p.ReadBy = append(p.ReadBy, k.Reader)
		}
	}
	sort.Strings(p.ReadBy)
	if len(p.Reads) > 0 {
		p.SecretNamespace = ns.ControlPlane
		if l.Topology == ExternalControlPlane {
			p.SecretNamespace = ns.External
		}
	}
	switch {
	case p.Role == RoleControlPlane:
		p.GatewayKind = IngressGateway
	case l.hasEastWest(*p) && p.Ambient():
		// Ambient multicluster has primaries only and no API server
		// exposure (ambientProblems): the gateway carries mesh traffic only.
		p.GatewayKind = AmbientEastWestGateway
		p.CrossNetwork = l.MultiNetwork
	case l.hasEastWest(*p):
		p.GatewayKind = EastWestGateway
		p.CrossNetwork = l.MultiNetwork
		p.ExposesIstiod = exposesIstiod(*p)
		p.ExposesAPIServer = p.APIServerAccess == APIServerViaGateway
	}
}

// servingRole is the role that runs the istiod of topology t.
func servingRole(t Topology) Role {
	if t == ExternalControlPlane {
		return RoleControlPlane
	}
	return RolePrimary
}

func roleIn(r Role, roles []Role) bool {
	for _, x := range roles {
		if x == r {
			return true
		}
	}
	return false
}

func roleList(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// configCluster is the cluster whose API server holds the mesh configuration
// for the external istiod on control-plane cluster cp: the first data-plane
// cluster it serves.
func (l *Layout) configCluster(cp string) string {
	if p, ok := l.Cluster(cp); ok && len(p.Serves) > 0 {
		return p.Serves[0]
	}
	return ""
}

// exposesIstiod: a primary serving remotes exposes istiod on its east-west
// gateway.
func exposesIstiod(p Placement) bool {
	return p.Role == RolePrimary && len(p.Serves) > 0
}

// hasEastWest: clusters with workloads on a multi-network mesh route
// cross-network traffic through their east-west gateway; a primary serving
// remotes exposes istiod through it, and a cluster read through its gateway
// its API server, even on a single network.
func (l *Layout) hasEastWest(p Placement) bool {
	if p.Role == RoleControlPlane {
		return false
	}
	return l.MultiNetwork || exposesIstiod(p) || p.APIServerAccess == APIServerViaGateway
}

// Ambient reports whether any cluster of the mesh runs ambient.
func (l *Layout) Ambient() bool {
	for _, p := range l.Clusters {
		if p.Ambient() {
			return true
		}
	}
	return false
}
