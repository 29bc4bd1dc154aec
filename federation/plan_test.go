package federation

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/flotillamesh/flotilla/deploy"
)

func TestNewPlan(t *testing.T) {
	p := func(name string) Member { return Member{Name: name, Role: RolePrimary, Network: "n-" + name} }
	r := func(name, cp string) Member {
		return Member{Name: name, Role: RoleRemote, Network: "n-" + name, ControlPlane: cp}
	}
	cp := func(name string) Member { return Member{Name: name, Role: RoleControlPlane} }
	dp := func(name, cp string) Member { return Member{Name: name, Role: RoleDataPlane, ControlPlane: cp} }
	rl := func(reader, target string) Link { return Link{Reader: reader, Target: target, Kind: LinkRemote} }
	cl := func(reader, target string) Link { return Link{Reader: reader, Target: target, Kind: LinkConfig} }

	tests := []struct {
		name     string
		topology Topology
		members  []Member
		links    []Link
		cps      map[string]string
		err      string
	}{
		{
			name: "multi-primary: every primary reads every other cluster", topology: MultiPrimary,
			members: []Member{p("west"), p("east"), p("north")},
			links:   []Link{rl("east", "north"), rl("east", "west"), rl("north", "east"), rl("north", "west"), rl("west", "east"), rl("west", "north")},
		},
		{
			name: "multi-primary: one cluster reads nothing", topology: MultiPrimary,
			members: []Member{p("east")},
		},
		{
			name: "multi-primary: single network plans the same links", topology: MultiPrimary,
			members: []Member{{Name: "east", Network: "n"}, {Name: "west", Network: "n"}},
			links:   []Link{rl("east", "west"), rl("west", "east")},
		},
		{
			name: "primary-remote: the primary reads each remote; remotes name it", topology: PrimaryRemote,
			members: []Member{p("east"), r("west", ""), r("north", "")},
			links:   []Link{rl("east", "north"), rl("east", "west")},
			cps:     map[string]string{"west": "east", "north": "east"},
		},
		{
			name: "primary-remote: two primaries read everything, each remote names its own", topology: PrimaryRemote,
			members: []Member{p("east"), p("west"), r("north", "west")},
			links:   []Link{rl("east", "north"), rl("east", "west"), rl("west", "east"), rl("west", "north")},
			cps:     map[string]string{"north": "west"},
		},
		{
			name: "external control plane: config secret for the first data plane, remote for the next", topology: ExternalControlPlane,
			members: []Member{cp("hub"), dp("west", ""), dp("east", "")},
			links:   []Link{rl("hub", "east"), cl("hub", "west")},
		},
		{
			name: "external control plane: two control planes, one config cluster each", topology: ExternalControlPlane,
			members: []Member{cp("cp1"), cp("cp2"), dp("a", "cp1"), dp("b", "cp2")},
			links:   []Link{cl("cp1", "a"), cl("cp2", "b")},
		},
		{
			name: "two clusters with the same name", topology: MultiPrimary,
			members: []Member{p("east"), p("east")}, err: "cluster east: listed twice",
		},
		{
			name: "primary-remote without a primary", topology: PrimaryRemote,
			members: []Member{r("east", ""), r("west", "")}, err: "no primary cluster",
		},
		{
			name: "external control plane without a control-plane cluster", topology: ExternalControlPlane,
			members: []Member{dp("east", "")}, err: "no control-plane cluster",
		},
		{
			name: "role foreign to the topology", topology: MultiPrimary,
			members: []Member{p("east"), r("west", "")}, err: `role "remote" is not part of topology multi-primary`,
		},
		{
			name: "remote naming a cluster that is not a primary", topology: PrimaryRemote,
			members: []Member{p("east"), r("west", "north")}, err: `controlPlane "north" is not a primary`,
		},
		{
			name: "remote with two primaries to choose from", topology: PrimaryRemote,
			members: []Member{p("east"), p("west"), r("north", "")}, err: "name one with controlPlane",
		},
		{
			name: "name that cannot be a secret name", topology: MultiPrimary,
			members: []Member{p("East_1")}, err: `cluster "East_1": invalid name`,
		},
		{
			name: "no clusters", topology: MultiPrimary, err: "no clusters",
		},
		{
			name: "unknown topology", topology: "star", members: []Member{p("east")}, err: "unknown topology",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := deploy.Compile(tc.topology, tc.members, deploy.Namespaces{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := NewPlan(l)
			if !reflect.DeepEqual(got.Links, tc.links) {
				t.Errorf("links = %v, want %v", got.Links, tc.links)
			}
			if tc.cps == nil {
				tc.cps = map[string]string{}
			}
			if !reflect.DeepEqual(got.ControlPlaneClusters, tc.cps) {
				t.Errorf("controlPlaneClusters = %v, want %v", got.ControlPlaneClusters, tc.cps)
			}
		})
	}
}

func TestNewPlanIsDeterministic(t *testing.T) {
	members := []Member{{Name: "c", Role: RolePrimary}, {Name: "a", Role: RolePrimary}, {Name: "b", Role: RolePrimary}}
	compile := func() Plan {
		l, err := deploy.Compile(MultiPrimary, members, deploy.Namespaces{})
		if err != nil {
			t.Fatal(err)
		}
		return NewPlan(l)
	}
	first := compile()
	for range 20 {
		again := compile()
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("plan changed between runs: %v then %v", first.Links, again.Links)
		}
	}
}

func TestAccountFor(t *testing.T) {
	o := Options{}
	tests := []struct {
		name     string
		topology Topology
		link     Link
		role     Role
		want     Account
	}{
		{"multi-primary reader", MultiPrimary, Link{Reader: "a", Target: "b", Kind: LinkRemote}, RolePrimary,
			Account{Namespace: "istio-system", Name: ReaderServiceAccount}},
		{"remote reader may write root certs and webhooks", PrimaryRemote, Link{Reader: "a", Target: "b", Kind: LinkRemote}, RoleRemote,
			Account{Namespace: "istio-system", Name: ReaderServiceAccount, Writer: true}},
		{"config link uses istiod's account in the external namespace", ExternalControlPlane, Link{Reader: "a", Target: "b", Kind: LinkConfig}, RoleDataPlane,
			Account{Namespace: "external-istiod", Name: "istiod", Config: true}},
		{"further data plane uses the reader in the external namespace", ExternalControlPlane, Link{Reader: "a", Target: "c", Kind: LinkRemote}, RoleDataPlane,
			Account{Namespace: "external-istiod", Name: ReaderServiceAccount, Writer: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := o.AccountFor(tc.topology, tc.link, tc.role); got != tc.want {
				t.Errorf("AccountFor = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestMissingDiscoveryReads: the reader's and the config account's rules
// grant every read istiod's remote-cluster sync needs; a rule set without
// endpointslices names exactly what is missing; wildcards grant.
func TestMissingDiscoveryReads(t *testing.T) {
	asReview := func(rules []*rbacv1ac.PolicyRuleApplyConfiguration) []authorizationv1.ResourceRule {
		var out []authorizationv1.ResourceRule
		for _, r := range rules {
			out = append(out, authorizationv1.ResourceRule{Verbs: r.Verbs, APIGroups: r.APIGroups, Resources: r.Resources})
		}
		return out
	}
	var withoutSlices []authorizationv1.ResourceRule
	for _, r := range asReview(ReaderRules(false)) {
		if !slices.Contains(r.Resources, "endpointslices") {
			withoutSlices = append(withoutSlices, r)
		}
	}
	tests := []struct {
		name  string
		rules []authorizationv1.ResourceRule
		want  []string
	}{
		{"reader", asReview(ReaderRules(false)), nil},
		{"writer reader", asReview(ReaderRules(true)), nil},
		{"external istiod on its config cluster", asReview(ConfigRules()), nil},
		{"no endpointslices", withoutSlices, []string{"list endpointslices.discovery.k8s.io", "watch endpointslices.discovery.k8s.io"}},
		{"cluster-admin", []authorizationv1.ResourceRule{{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}}}, nil},
		{"get only", []authorizationv1.ResourceRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"services"}}}, []string{
			"list namespaces", "watch namespaces", "list nodes", "watch nodes", "list pods", "watch pods", "list services", "watch services",
			"list endpointslices.discovery.k8s.io", "watch endpointslices.discovery.k8s.io"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := MissingDiscoveryReads(tc.rules); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("missing = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestConfigRulesCoverGatewayController: the external istiod's account on
// its config cluster may do what the chart's istiod-gateway-controller
// ClusterRole allows, which istiod's gateway deployment controller needs
// before its discovery turns ready where the Gateway API CRDs exist.
func TestConfigRulesCoverGatewayController(t *testing.T) {
	allows := func(group, resource, verb string) bool {
		for _, r := range ConfigRules() {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && (slices.Contains(r.Verbs, verb) || slices.Contains(r.Verbs, "*")) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct{ group, resource string }{
		{"apps", "deployments"},
		{"autoscaling", "horizontalpodautoscalers"},
		{"policy", "poddisruptionbudgets"},
		{"", "services"},
		{"", "serviceaccounts"},
	} {
		for _, verb := range []string{"get", "list", "watch", "create", "update", "patch", "delete"} {
			if !allows(tc.group, tc.resource, verb) {
				t.Errorf("ConfigRules does not allow %s %s in group %q", verb, tc.resource, tc.group)
			}
		}
	}
}
