package deploy

import (
	"reflect"
	"strings"
	"testing"
)

func ambientMember(name string, role Role, network string) Member {
	return Member{Name: name, Role: role, Network: network, DataplaneMode: DataplaneAmbient}
}

// TestAmbientRules: Compile refuses what the pinned Istio does not support
// in ambient mode, naming the clusters, the reason and the Istio version.
func TestAmbientRules(t *testing.T) {
	tests := []struct {
		name    string
		t       Topology
		members []Member
		want    []string // substrings of the error, "" for none
	}{
		{"ambient multi-primary on two networks", MultiPrimary,
			[]Member{ambientMember("east", "primary", "n1"), ambientMember("west", "primary", "n2")}, nil},
		{"one ambient cluster", MultiPrimary, []Member{ambientMember("east", "primary", "n1")}, nil},
		{"ambient primary-remote", PrimaryRemote,
			[]Member{ambientMember("east", "primary", "n1"), ambientMember("west", "remote", "n2")},
			[]string{"topology primary-remote does not support dataplaneMode ambient (clusters east, west) as of Istio 1.30", "only primary clusters"}},
		{"ambient external control plane", ExternalControlPlane,
			[]Member{ambientMember("cp", "control-plane", "n1"), ambientMember("dp", "data-plane", "n2")},
			[]string{"topology external-control-plane does not support dataplaneMode ambient"}},
		{"mixed sidecar and ambient", MultiPrimary,
			[]Member{member("east", "primary", "n1"), ambientMember("west", "primary", "n2")},
			[]string{"clusters east are sidecar and west ambient", "not supported as of Istio 1.30", "HBONE"}},
		{"ambient clusters on one network", MultiPrimary,
			[]Member{ambientMember("east", "primary", "n1"), ambientMember("west", "primary", "n1")},
			[]string{`ambient clusters east, west share network "n1"`, "untested as of Istio 1.30"}},
		{"ambient clusters without networks", MultiPrimary,
			[]Member{ambientMember("east", "primary", ""), ambientMember("west", "primary", "")},
			[]string{"share one (unnamed) network"}},
		{"ambient API server through the gateway", MultiPrimary,
			[]Member{ambientMember("east", "primary", "n1"), {Name: "west", Role: "primary", Network: "n2", DataplaneMode: DataplaneAmbient, APIServerAccess: APIServerViaGateway}},
			[]string{"cluster west: apiServerAccess gateway is not supported in ambient mode", "double HBONE"}},
		{"unknown mode", MultiPrimary, []Member{{Name: "east", Role: "primary", Network: "n1", DataplaneMode: "sidecarless"}},
			[]string{`cluster east: dataplaneMode "sidecarless" is not one of sidecar, ambient`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(tt.t, tt.members, Namespaces{})
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Compile() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Compile() = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Compile() = %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// TestAmbientPlan: an ambient primary of a multi-network mesh gets the
// namespaces (network label on its control-plane namespace, istio-cni,
// ztunnel), then IstioCNI with the ambient profile, ZTunnel default with
// its cluster and network, and Istio with the ambient profile, the
// multi-cluster values and the ambient multi-network env; its gateway is
// the ambient east-west one. NoCNI does not drop the CNI ambient needs.
func TestAmbientPlan(t *testing.T) {
	members := []Member{ambientMember("east", "primary", "n1"), ambientMember("west", "primary", "n2")}
	p, err := planCluster(MultiPrimary, members, "west", testOpts, nil)
	if err != nil {
		t.Fatal(err)
	}
	var setup, cp []string
	for _, o := range p.Setup {
		setup = append(setup, o.Ref())
	}
	for _, o := range p.ControlPlane {
		cp = append(cp, o.Ref())
	}
	if want := []string{"Namespace istio-system", "Namespace istio-cni", "Namespace ztunnel"}; !reflect.DeepEqual(setup, want) {
		t.Errorf("setup %v, want %v", setup, want)
	}
	if want := []string{"IstioCNI default", "ZTunnel default", "Istio default"}; !reflect.DeepEqual(cp, want) {
		t.Errorf("control plane %v, want %v", cp, want)
	}
	if ns := p.Setup[0].Unstructured(); ns.GetLabels()[NetworkLabel] != "n2" {
		t.Errorf("namespace istio-system labels %v, want %s=n2", ns.GetLabels(), NetworkLabel)
	}
	if p.GatewayKind != AmbientEastWestGateway || !p.CrossNetwork || p.DataplaneMode != DataplaneAmbient {
		t.Errorf("gateway %q cross-network %v mode %q, want ambient-east-west, true, ambient", p.GatewayKind, p.CrossNetwork, p.DataplaneMode)
	}
	specs := map[string]map[string]any{}
	for _, o := range p.ControlPlane {
		u := o.Unstructured()
		specs[u.GetKind()] = u.Object["spec"].(map[string]any)
	}
	for _, c := range []struct {
		kind, path string
		want       any
	}{
		{"IstioCNI", "profile", "ambient"},
		{"IstioCNI", "namespace", "istio-cni"},
		{"ZTunnel", "namespace", "ztunnel"},
		{"ZTunnel", "version", "v1.30.3"},
		{"ZTunnel", "values.ztunnel.multiCluster.clusterName", "west"},
		{"ZTunnel", "values.ztunnel.network", "n2"},
		{"Istio", "profile", "ambient"},
		{"Istio", "values.global.meshID", "mesh1"},
		{"Istio", "values.global.multiCluster.clusterName", "west"},
		{"Istio", "values.global.network", "n2"},
		{"Istio", "values.pilot.trustedZtunnelNamespace", "ztunnel"},
		{"Istio", "values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK", "true"},
	} {
		if got := field(specs[c.kind], c.path); got != c.want {
			t.Errorf("%s spec.%s = %v, want %v", c.kind, c.path, got, c.want)
		}
	}

	// One ambient cluster alone is not multi-network: no east-west gateway
	// and no multi-network env.
	single, err := planCluster(MultiPrimary, members[:1], "east", testOpts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if single.GatewayKind != NoGateway {
		t.Errorf("single ambient cluster: gateway %q, want none", single.GatewayKind)
	}
	if v := field(istioSpec(t, single, IstioName), "values.pilot.env"); v != nil {
		t.Errorf("single ambient cluster: pilot.env %v, want none", v)
	}

	// Sidecar clusters keep their plan: no ZTunnel, no profile.
	side, err := planCluster(MultiPrimary, []Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, "east", testOpts, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range side.ControlPlane {
		if k := o.Unstructured().GetKind(); k != "Istio" {
			t.Errorf("sidecar cluster with NoCNI: %s in the control plane", k)
		}
	}
	if side.GatewayKind != EastWestGateway || istioSpec(t, side, IstioName)["profile"] != nil {
		t.Errorf("sidecar cluster: gateway %q profile %v, want east-west and none", side.GatewayKind, istioSpec(t, side, IstioName)["profile"])
	}
}
