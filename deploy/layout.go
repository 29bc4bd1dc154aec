package deploy

import (
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// layout is a validated topology: who serves whom and whether the mesh spans
// networks.
type layout struct {
	topology Topology
	members  []Member
	byName   map[string]Member
	// servedBy maps every cluster to the cluster whose istiod serves it.
	servedBy map[string]string
	// serves maps a primary or control-plane cluster to the remotes or
	// data-plane clusters it serves, in spec order.
	serves map[string][]string
	// multiNetwork: the clusters that run workloads are on more than one
	// network, so cross-network traffic goes through east-west gateways.
	multiNetwork bool
}

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
	_, err := newLayout(t, members)
	return err
}

func newLayout(t Topology, members []Member) (*layout, error) {
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
	l := &layout{
		topology: t,
		byName:   map[string]Member{},
		servedBy: map[string]string{},
		serves:   map[string][]string{},
	}
	var errs []error
	named, unnamed := []string{}, []string{}
	networks := map[string]bool{}
	for _, m := range members {
		if m.Role == "" {
			m.Role = RolePrimary
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
		l.members = append(l.members, m)
		l.byName[m.Name] = m
	}
	if len(named) > 0 && len(unnamed) > 0 {
		errs = append(errs, fmt.Errorf("clusters %s name a network and %s do not: name every cluster's network (clusters on one network share its name) or none",
			strings.Join(named, ", "), strings.Join(unnamed, ", ")))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, m := range l.members {
		by, err := ServedBy(t, m, l.members)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.servedBy[m.Name] = by
		if by != m.Name {
			l.serves[by] = append(l.serves[by], m.Name)
		}
	}
	for _, m := range l.members {
		if m.Role == RoleControlPlane && len(l.serves[m.Name]) == 0 {
			errs = append(errs, fmt.Errorf("cluster %s: control-plane cluster serves no data-plane cluster", m.Name))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	l.multiNetwork = len(networks) > 1
	return l, nil
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
func (l *layout) configCluster(cp string) string {
	if s := l.serves[cp]; len(s) > 0 {
		return s[0]
	}
	return ""
}

// exposesIstiod: a primary serving remotes exposes istiod on its east-west
// gateway.
func (l *layout) exposesIstiod(m Member) bool {
	return m.Role == RolePrimary && len(l.serves[m.Name]) > 0
}

// hasEastWest: clusters with workloads on a multi-network mesh route
// cross-network traffic through their east-west gateway; a primary serving
// remotes exposes istiod through it even on a single network.
func (l *layout) hasEastWest(m Member) bool {
	if m.Role == RoleControlPlane {
		return false
	}
	return l.multiNetwork || l.exposesIstiod(m)
}
