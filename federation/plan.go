package federation

import (
	"sort"

	"github.com/flotillamesh/flotilla/deploy"
)

// The links of a mesh are compiled with its layout (deploy.Layout.Links).
type (
	LinkKind = deploy.LinkKind
	Link     = deploy.Link
)

const (
	LinkRemote = deploy.LinkRemote
	LinkConfig = deploy.LinkConfig
)

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

// NewPlan is where the secrets of the mesh laid out by l go: its links
// (deploy.Layout.Links says who reads whom), and for each remote the primary
// its namespace names.
func NewPlan(l *deploy.Layout) Plan {
	p := Plan{Topology: l.Topology, Links: l.Links(), ControlPlaneClusters: map[string]string{}}
	for _, c := range l.Clusters {
		if c.Role == RoleRemote {
			p.ControlPlaneClusters[c.Name] = c.ServedBy
		}
	}
	return p
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
