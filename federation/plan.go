package federation

import (
	"fmt"
	"sort"

	"github.com/flotillamesh/flotilla/deploy"
	"k8s.io/apimachinery/pkg/util/validation"
)

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

// Plan is where the secrets of a mesh go.
type Plan struct {
	Topology Topology
	// Links are sorted by reader, then target.
	Links []Link
	// ControlPlaneClusters maps each remote cluster (primary-remote) to the
	// primary its control-plane namespace names in the
	// topology.istio.io/controlPlaneClusters annotation.
	ControlPlaneClusters map[string]string
}

// Targets returns the clusters some link reads, each with the kind of
// credential it hands out, sorted by name.
func (p Plan) Targets() []Link {
	seen := map[string]bool{}
	var out []Link
	for _, l := range p.Links {
		if !seen[l.Target] {
			seen[l.Target] = true
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out
}

// LinksFrom returns the links whose secret reader holds.
func (p Plan) LinksFrom(reader string) []Link {
	var out []Link
	for _, l := range p.Links {
		if l.Reader == reader {
			out = append(out, l)
		}
	}
	return out
}

// NewPlan decides which cluster holds a secret for which other cluster:
//   - multi-primary and primary-remote: every primary reads every other
//     cluster of the mesh (with one primary, that is one secret per remote;
//     with several, each also needs the others' endpoints); each remote's
//     namespace names the primary that serves it (ServedBy);
//   - external control plane: each control-plane cluster holds a config
//     secret for the first data-plane cluster it serves (its config cluster,
//     in spec order) and a remote secret for every further one, which is how
//     istioctl attaches additional remotes to one external istiod.
//
// The same plan holds for single and multi network meshes: networks change
// gateways, not who reads whom.
func NewPlan(t Topology, members []Member) (Plan, error) {
	if !t.Valid() {
		return Plan{}, fmt.Errorf("unknown topology %q (want one of %v)", t, deploy.Topologies())
	}
	members = normalize(members)
	if err := validateMembers(t, members); err != nil {
		return Plan{}, err
	}
	p := Plan{Topology: t, ControlPlaneClusters: map[string]string{}}
	switch t {
	case MultiPrimary, PrimaryRemote:
		for _, r := range members {
			if r.Role != RolePrimary {
				continue
			}
			for _, o := range members {
				if o.Name != r.Name {
					p.Links = append(p.Links, Link{Reader: r.Name, Target: o.Name, Kind: LinkRemote})
				}
			}
		}
		for _, m := range members {
			if m.Role != RoleRemote {
				continue
			}
			cp, err := deploy.ServedBy(t, m, members)
			if err != nil {
				return Plan{}, err
			}
			p.ControlPlaneClusters[m.Name] = cp
		}
	case ExternalControlPlane:
		hasConfig := map[string]bool{}
		for _, m := range members {
			if m.Role != RoleDataPlane {
				continue
			}
			cp, err := deploy.ServedBy(t, m, members)
			if err != nil {
				return Plan{}, err
			}
			kind := LinkRemote
			if !hasConfig[cp] {
				hasConfig[cp], kind = true, LinkConfig
			}
			p.Links = append(p.Links, Link{Reader: cp, Target: m.Name, Kind: kind})
		}
	}
	sort.SliceStable(p.Links, func(i, j int) bool {
		a, b := p.Links[i], p.Links[j]
		if a.Reader != b.Reader {
			return a.Reader < b.Reader
		}
		return a.Target < b.Target
	})
	return p, nil
}

// normalize gives clusters without a role the default one, primary.
func normalize(members []Member) []Member {
	out := make([]Member, len(members))
	for i, m := range members {
		if m.Role == "" {
			m.Role = RolePrimary
		}
		out[i] = m
	}
	return out
}

func validateMembers(t Topology, members []Member) error {
	if len(members) == 0 {
		return fmt.Errorf("topology %s: no clusters", t)
	}
	seen := map[string]bool{}
	roles := map[Role]int{}
	for _, m := range members {
		if m.Name == "" {
			return fmt.Errorf("topology %s: a cluster has no name", t)
		}
		// The name becomes part of a Secret name and a kubeconfig key.
		if errs := validation.IsDNS1123Label(m.Name); len(errs) > 0 {
			return fmt.Errorf("cluster %q: name is not a DNS-1123 label: %v", m.Name, errs)
		}
		if seen[m.Name] {
			return fmt.Errorf("cluster %s: listed twice", m.Name)
		}
		seen[m.Name] = true
		if !allows(t, m.Role) {
			return fmt.Errorf("cluster %s: role %q is not one of topology %s's roles %v", m.Name, m.Role, t, t.Roles())
		}
		roles[m.Role]++
	}
	switch t {
	case MultiPrimary, PrimaryRemote:
		if roles[RolePrimary] == 0 {
			return fmt.Errorf("topology %s: no %s cluster", t, RolePrimary)
		}
	case ExternalControlPlane:
		if roles[RoleControlPlane] == 0 {
			return fmt.Errorf("topology %s: no %s cluster", t, RoleControlPlane)
		}
	}
	return nil
}

func allows(t Topology, r Role) bool {
	for _, a := range t.Roles() {
		if a == r {
			return true
		}
	}
	return false
}
