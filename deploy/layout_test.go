package deploy

import (
	"reflect"
	"strings"
	"testing"
)

// TestCompile: the layout says, per cluster, what every step reads: who
// serves it, its namespaces, whom it reads and is read by, its gateway.
func TestCompile(t *testing.T) {
	type want struct {
		servedBy, namespace, caNamespace, secretNamespace, istio, configCluster string
		readBy                                                                  []string
		reads                                                                   int
		gateway                                                                 GatewayKind
	}
	tests := []struct {
		name     string
		topology Topology
		members  []Member
		ns       Namespaces
		want     map[string]want
	}{
		{
			"multi-primary, two networks: each reads the other, east-west gateways", MultiPrimary,
			[]Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, Namespaces{},
			map[string]want{
				"east": {servedBy: "east", namespace: "istio-system", caNamespace: "istio-system", secretNamespace: "istio-system", istio: IstioName, readBy: []string{"west"}, reads: 1, gateway: EastWestGateway},
				"west": {servedBy: "west", namespace: "istio-system", caNamespace: "istio-system", secretNamespace: "istio-system", istio: IstioName, readBy: []string{"east"}, reads: 1, gateway: EastWestGateway},
			},
		},
		{
			"primary-remote, one network: the remote reads nothing and holds cacerts; the primary exposes istiod", PrimaryRemote,
			[]Member{member("east", "primary", "n1"), member("west", "remote", "n1")}, Namespaces{ControlPlane: "mesh-system"},
			map[string]want{
				"east": {servedBy: "east", namespace: "mesh-system", caNamespace: "mesh-system", secretNamespace: "mesh-system", istio: IstioName, reads: 1, gateway: EastWestGateway},
				"west": {servedBy: "east", namespace: "mesh-system", caNamespace: "mesh-system", istio: IstioName, readBy: []string{"east"}},
			},
		},
		{
			"external control plane: the control plane signs and reads from the external namespace", ExternalControlPlane,
			[]Member{member("cp", "control-plane", "n1"), member("dp1", "data-plane", "n1"), member("dp2", "data-plane", "n1")}, Namespaces{External: "ext"},
			map[string]want{
				"cp":  {servedBy: "cp", namespace: "istio-system", caNamespace: "ext", secretNamespace: "ext", istio: IstioName, configCluster: "dp1", reads: 2, gateway: IngressGateway},
				"dp1": {servedBy: "cp", namespace: "ext", istio: ExternalIstiodName, configCluster: "dp1", readBy: []string{"cp"}},
				"dp2": {servedBy: "cp", namespace: "ext", istio: ExternalIstiodName, configCluster: "dp1", readBy: []string{"cp"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Compile(tt.topology, tt.members, tt.ns)
			if err != nil {
				t.Fatal(err)
			}
			for name, w := range tt.want {
				p, ok := l.Cluster(name)
				if !ok {
					t.Fatalf("%s: not in the layout", name)
				}
				got := want{servedBy: p.ServedBy, namespace: p.Namespace, caNamespace: p.CANamespace, secretNamespace: p.SecretNamespace,
					istio: p.Istio, configCluster: p.ConfigCluster, readBy: p.ReadBy, reads: len(p.Reads), gateway: p.GatewayKind}
				if !reflect.DeepEqual(got, w) {
					t.Errorf("%s:\n got %+v\nwant %+v", name, got, w)
				}
				if p.HoldsCA() != (w.caNamespace != "") {
					t.Errorf("%s: HoldsCA = %v", name, p.HoldsCA())
				}
			}
		})
	}
}

// TestCompileLinks: the external control plane's first data-plane cluster
// is its config cluster (a config link); the others are read as remotes.
func TestCompileLinks(t *testing.T) {
	l, err := Compile(ExternalControlPlane, []Member{member("cp", "control-plane", ""), member("b", "data-plane", ""), member("a", "data-plane", "")}, Namespaces{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Link{{Reader: "cp", Target: "a", Kind: LinkRemote}, {Reader: "cp", Target: "b", Kind: LinkConfig}}
	if got := l.Links(); !reflect.DeepEqual(got, want) {
		t.Errorf("links = %v, want %v", got, want)
	}
}

// TestCompileAPIServerAccess: a cluster read through its gateway runs an
// east-west gateway that exposes its API server, even on a single network;
// direct is the default; a value that is neither, or gateway on a cluster
// that no cluster reads, is refused naming the cluster.
func TestCompileAPIServerAccess(t *testing.T) {
	via := func(m Member, a APIServerAccess) Member { m.APIServerAccess = a; return m }
	type want struct {
		access  APIServerAccess
		gateway GatewayKind
		exposes bool
	}
	tests := []struct {
		name     string
		topology Topology
		members  []Member
		want     map[string]want
		err      string
	}{
		{"multi-primary, one network, west private: only west runs a gateway, exposing its API server", MultiPrimary,
			[]Member{member("east", "primary", "n1"), via(member("west", "primary", "n1"), APIServerViaGateway)},
			map[string]want{"east": {access: APIServerDirect}, "west": {access: APIServerViaGateway, gateway: EastWestGateway, exposes: true}}, ""},
		{"multi-primary, two networks, both private", MultiPrimary,
			[]Member{via(member("east", "primary", "n1"), APIServerViaGateway), via(member("west", "primary", "n2"), APIServerViaGateway)},
			map[string]want{"east": {access: APIServerViaGateway, gateway: EastWestGateway, exposes: true}, "west": {access: APIServerViaGateway, gateway: EastWestGateway, exposes: true}}, ""},
		{"direct spelled out is the default", MultiPrimary,
			[]Member{via(member("east", "primary", "n1"), APIServerDirect), member("west", "primary", "n2")},
			map[string]want{"east": {access: APIServerDirect, gateway: EastWestGateway}, "west": {access: APIServerDirect, gateway: EastWestGateway}}, ""},
		{"external control plane: a private data-plane cluster is read through its gateway", ExternalControlPlane,
			[]Member{member("cp", "control-plane", "n1"), via(member("dp", "data-plane", "n1"), APIServerViaGateway)},
			map[string]want{"cp": {access: APIServerDirect, gateway: IngressGateway}, "dp": {access: APIServerViaGateway, gateway: EastWestGateway, exposes: true}}, ""},
		{"unknown value", MultiPrimary,
			[]Member{via(member("east", "primary", "n1"), "vpn"), member("west", "primary", "n1")}, nil,
			`cluster east: apiServerAccess "vpn" is not one of direct, gateway`},
		{"nobody reads the control-plane cluster", ExternalControlPlane,
			[]Member{via(member("cp", "control-plane", "n1"), APIServerViaGateway), member("dp", "data-plane", "n1")}, nil,
			"cluster cp: apiServerAccess gateway, but no cluster of topology external-control-plane reads it"},
		{"nobody reads the only primary of primary-remote", PrimaryRemote,
			[]Member{via(member("east", "primary", "n1"), APIServerViaGateway), member("west", "remote", "n1")}, nil,
			"cluster east: apiServerAccess gateway, but no cluster of topology primary-remote reads it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Compile(tt.topology, tt.members, Namespaces{})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, w := range tt.want {
				p, _ := l.Cluster(name)
				got := want{access: p.APIServerAccess, gateway: p.GatewayKind, exposes: p.ExposesAPIServer}
				if got != w {
					t.Errorf("%s: got %+v, want %+v", name, got, w)
				}
			}
		})
	}
}
