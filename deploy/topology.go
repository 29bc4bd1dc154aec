package deploy

import "fmt"

// Topology is how the clusters of a mesh share control planes.
type Topology string

const (
	// MultiPrimary: every cluster runs istiod and reads every other cluster.
	MultiPrimary Topology = "multi-primary"
	// PrimaryRemote: remotes run no istiod; their primary reads them.
	PrimaryRemote Topology = "primary-remote"
	// ExternalControlPlane: istiod for a data-plane cluster runs in a
	// control-plane cluster and reads its configuration from the data-plane cluster.
	ExternalControlPlane Topology = "external-control-plane"
)

// Topologies lists the valid topologies, in the order documentation shows them.
func Topologies() []Topology { return []Topology{MultiPrimary, PrimaryRemote, ExternalControlPlane} }

// Role is a cluster's part in its topology.
type Role string

const (
	RolePrimary      Role = "primary"
	RoleRemote       Role = "remote"
	RoleControlPlane Role = "control-plane"
	RoleDataPlane    Role = "data-plane"
)

// Roles returns the roles a topology allows.
func (t Topology) Roles() []Role {
	switch t {
	case MultiPrimary:
		return []Role{RolePrimary}
	case PrimaryRemote:
		return []Role{RolePrimary, RoleRemote}
	case ExternalControlPlane:
		return []Role{RoleControlPlane, RoleDataPlane}
	}
	return nil
}

// Valid reports whether t is a known topology.
func (t Topology) Valid() bool { return t.Roles() != nil }

// Member is one cluster as the topology sees it.
type Member struct {
	Name    string
	Role    Role
	Network string
	// ControlPlane names the cluster whose istiod serves this one (a remote's
	// primary, a data-plane cluster's control-plane cluster); "" lets the only
	// candidate be chosen.
	ControlPlane string
	// APIServerAccess is how the clusters that read this one reach its API
	// server; "" is direct.
	APIServerAccess APIServerAccess
	// DataplaneMode is how the cluster's workloads join the mesh; "" is
	// sidecar.
	DataplaneMode DataplaneMode
}

// ServedBy returns the cluster whose istiod serves m: m itself for primaries
// and control-plane clusters, else its named or only possible control plane.
func ServedBy(t Topology, m Member, all []Member) (string, error) {
	var want Role
	switch m.Role {
	case RolePrimary, RoleControlPlane:
		return m.Name, nil
	case RoleRemote:
		want = RolePrimary
	case RoleDataPlane:
		want = RoleControlPlane
	default:
		return "", fmt.Errorf("cluster %s: unknown role %q", m.Name, m.Role)
	}
	var candidates []string
	for _, o := range all {
		if o.Role == want && (m.ControlPlane == "" || m.ControlPlane == o.Name) {
			candidates = append(candidates, o.Name)
		}
	}
	switch {
	case len(candidates) == 1:
		return candidates[0], nil
	case m.ControlPlane != "":
		return "", fmt.Errorf("cluster %s: controlPlane %q is not a %s cluster of this mesh", m.Name, m.ControlPlane, want)
	case len(candidates) == 0:
		return "", fmt.Errorf("cluster %s: role %s needs a %s cluster in the mesh, and there is none", m.Name, m.Role, want)
	default:
		return "", fmt.Errorf("cluster %s: %d %s clusters could serve it (%v); name one with controlPlane", m.Name, len(candidates), want, candidates)
	}
}
