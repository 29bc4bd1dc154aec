package federation

import "github.com/flotillamesh/flotilla/deploy"

// The topology vocabulary lives in deploy, the floor every subsystem stands
// on; these names keep federation's callers unchanged.
type (
	Topology = deploy.Topology
	Role     = deploy.Role
	Member   = deploy.Member
)

const (
	MultiPrimary         = deploy.MultiPrimary
	PrimaryRemote        = deploy.PrimaryRemote
	ExternalControlPlane = deploy.ExternalControlPlane

	RolePrimary      = deploy.RolePrimary
	RoleRemote       = deploy.RoleRemote
	RoleControlPlane = deploy.RoleControlPlane
	RoleDataPlane    = deploy.RoleDataPlane
)
