package gateways

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy"
)

func member(name string, role deploy.Role, network string) deploy.Member {
	return deploy.Member{Name: name, Role: role, Network: network}
}

var testOpts = deploy.Options{MeshID: "mesh1", Version: "1.30.3", NoCNI: true}

// refs lists "Kind ns/name" of a plan phase.
func refs(p ClusterPlan) (setup, gw, cp []string) {
	for _, o := range p.Setup {
		setup = append(setup, o.Ref())
	}
	for _, o := range p.Gateways {
		gw = append(gw, o.Ref())
	}
	for _, o := range p.ControlPlane {
		cp = append(cp, o.Ref())
	}
	return
}

var eastWestRefs = func(ns string) []string {
	return []string{
		"ServiceAccount " + ns + "/istio-eastwestgateway-service-account",
		"Role " + ns + "/istio-eastwestgateway-sds",
		"RoleBinding " + ns + "/istio-eastwestgateway-sds",
		"Deployment " + ns + "/istio-eastwestgateway",
		"PodDisruptionBudget " + ns + "/istio-eastwestgateway",
		"Service " + ns + "/istio-eastwestgateway",
		"HorizontalPodAutoscaler " + ns + "/istio-eastwestgateway",
	}
}

func cat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

func TestPlanObjects(t *testing.T) {
	ew := eastWestRefs("istio-system")
	tests := []struct {
		name      string
		topology  deploy.Topology
		members   []deploy.Member
		opts      deploy.Options
		cluster   string
		wantSetup []string
		wantGW    []string
		skipGW    bool
		wantCP    []string
	}{
		{
			name: "multi-primary multi-network primary", topology: deploy.MultiPrimary,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "multi-primary single network has no gateways", topology: deploy.MultiPrimary,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantCP:    []string{"Istio default"},
		},
		{
			name: "IstioCNI and its namespace unless NoCNI", topology: deploy.MultiPrimary,
			members: []deploy.Member{member("east", "primary", "n1")}, cluster: "east", opts: deploy.Options{MeshID: "m", Version: "1.30.3"},
			wantSetup: []string{"Namespace istio-system", "Namespace istio-cni"},
			wantCP:    []string{"IstioCNI default", "Istio default"},
		},
		{
			name: "primary serving a remote on another network", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway", "Gateway istio-system/istiod-gateway", "VirtualService istio-system/istiod-vs"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "primary serving a remote on its network exposes istiod only", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n1")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/istiod-gateway", "VirtualService istio-system/istiod-vs"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "remote on another network", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "remote on the primary's network has no gateway", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantCP:    []string{"Istio default"},
		},
		{
			name: "control-plane cluster", topology: deploy.ExternalControlPlane,
			members: []deploy.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system", "Namespace external-istiod"},
			wantGW: []string{
				"ServiceAccount istio-system/istio-ingressgateway-service-account",
				"Role istio-system/istio-ingressgateway-sds",
				"RoleBinding istio-system/istio-ingressgateway-sds",
				"Deployment istio-system/istio-ingressgateway",
				"PodDisruptionBudget istio-system/istio-ingressgateway",
				"Service istio-system/istio-ingressgateway",
				"HorizontalPodAutoscaler istio-system/istio-ingressgateway",
				"ServiceAccount external-istiod/istiod-service-account",
				"Gateway external-istiod/external-istiod-gw",
				"VirtualService external-istiod/external-istiod-vs",
			},
			wantCP: []string{"Istio default", "Istio external-istiod"},
		},
		{
			name: "control-plane cluster runs no IstioCNI", topology: deploy.ExternalControlPlane, opts: deploy.Options{MeshID: "m", Version: "1.30.3"},
			members: []deploy.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system", "Namespace external-istiod"},
			skipGW:    true, // checked by the previous case
			wantCP:    []string{"Istio default", "Istio external-istiod"},
		},
		{
			name: "data-plane cluster", topology: deploy.ExternalControlPlane,
			members: []deploy.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace external-istiod"},
			wantCP:    []string{"Istio external-istiod"},
		},
		{
			name: "data-plane clusters on two networks get east-west gateways", topology: deploy.ExternalControlPlane,
			members: []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, cluster: "north",
			wantSetup: []string{"Namespace external-istiod"},
			wantGW:    cat(eastWestRefs("external-istiod"), []string{"Gateway external-istiod/cross-network-gateway"}),
			wantCP:    []string{"Istio external-istiod"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if opts.MeshID == "" {
				opts = testOpts
			}
			p, err := planCluster(tt.topology, tt.members, tt.cluster, opts, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			setup, gw, cp := refs(p)
			if !reflect.DeepEqual(setup, tt.wantSetup) {
				t.Errorf("setup = %v, want %v", setup, tt.wantSetup)
			}
			if !tt.skipGW && !reflect.DeepEqual(gw, tt.wantGW) {
				t.Errorf("gateways = %v\nwant %v", gw, tt.wantGW)
			}
			if !reflect.DeepEqual(cp, tt.wantCP) {
				t.Errorf("control plane = %v, want %v", cp, tt.wantCP)
			}
		})
	}
}

func TestRenderRoundTrip(t *testing.T) {
	plans, err := planMesh(deploy.PrimaryRemote, []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, deploy.Options{MeshID: "mesh1", Version: "1.30.3"}, map[string]string{"east": "192.0.2.10"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := Render(dir, plans)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 || !strings.HasSuffix(paths[0], "/east.yaml") || !strings.HasSuffix(paths[1], "/west.yaml") {
		t.Fatalf("paths = %v", paths)
	}
	for i, p := range plans {
		data, err := deploy.RenderYAML(p.Objects())
		if err != nil {
			t.Fatal(err)
		}
		got, err := deploy.DecodeYAML(strings.NewReader(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(p.Objects()) {
			t.Fatalf("%s: decoded %d objects, want %d", paths[i], len(got), len(p.Objects()))
		}
		for j, o := range p.Objects() {
			if want := o.Unstructured(); !reflect.DeepEqual(normalize(t, got[j]), normalize(t, want)) {
				t.Errorf("%s: object %d differs after YAML round trip:\n%v\n%v", p.Cluster, j, got[j], want)
			}
		}
	}
}

// normalize makes numbers compare equal whichever decoder produced them.
func normalize(t *testing.T, u *unstructured.Unstructured) map[string]any {
	t.Helper()
	data, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func BenchmarkPlan(b *testing.B) {
	members := []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2"), member("north", "remote", "n3")}
	opts := deploy.Options{MeshID: "mesh1", Version: "1.30.3"}
	addrs := map[string]string{"east": "192.0.2.10"}
	for b.Loop() {
		plans, err := planMesh(deploy.PrimaryRemote, members, opts, addrs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := deploy.RenderYAML(plans[0].Objects()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGatewayRevision: the gateway pods name the revision that injects them
// when it is not the default one. A data-plane cluster's control plane is
// the external-istiod revision: Sail renders only that revision's
// webhooks (it drops values.defaultRevision), which select istio.io/rev.
func TestGatewayRevision(t *testing.T) {
	tests := []struct {
		name     string
		topology deploy.Topology
		members  []deploy.Member
		cluster  string
		want     string
	}{
		{"multi-primary", deploy.MultiPrimary, []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, "east", ""},
		{"remote", deploy.PrimaryRemote, []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, "west", ""},
		{"control-plane ingress", deploy.ExternalControlPlane, []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, "east", ""},
		{"data plane", deploy.ExternalControlPlane, []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, "north", deploy.ExternalIstiodName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planCluster(tt.topology, tt.members, tt.cluster, testOpts, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			if p.Gateway == nil {
				t.Fatal("no gateway")
			}
			d := p.Gateway.Deployment()
			got, set := d.Spec.Template.Labels["istio.io/rev"]
			if got != tt.want || set != (tt.want != "") {
				t.Errorf("gateway pods' istio.io/rev = %q (set %v), want %q", got, set, tt.want)
			}
			if _, onService := p.Gateway.Service().Labels["istio.io/rev"]; onService {
				t.Error("istio.io/rev on the gateway Service: injection reads it on pods only")
			}
		})
	}
}

// TestPlanAPIServerExposure: a cluster read through its gateway gets the
// API server's Gateway and VirtualService and a gateway Service port of its
// own, on a single network too; its readers' gateways, and a cluster read
// directly, expose no API server.
func TestPlanAPIServerExposure(t *testing.T) {
	private := member("west", "primary", "n1")
	private.APIServerAccess = deploy.APIServerViaGateway
	exposure := []string{"Gateway istio-system/kube-apiserver-gateway", "VirtualService istio-system/kube-apiserver-vs"}
	tests := []struct {
		name     string
		members  []deploy.Member
		cluster  string
		wantGW   []string
		wantPort bool
	}{
		{"private cluster on a single network: a gateway for its API server only", []deploy.Member{member("east", "primary", "n1"), private}, "west",
			cat(eastWestRefs("istio-system"), exposure), true},
		{"its reader on the same network runs no gateway", []deploy.Member{member("east", "primary", "n1"), private}, "east", nil, false},
		{"private cluster on its own network: cross-network and API server", []deploy.Member{member("east", "primary", "n0"), private}, "west",
			cat(eastWestRefs("istio-system"), []string{"Gateway istio-system/cross-network-gateway"}, exposure), true},
		{"its reader on another network: cross-network only", []deploy.Member{member("east", "primary", "n0"), private}, "east",
			cat(eastWestRefs("istio-system"), []string{"Gateway istio-system/cross-network-gateway"}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planCluster(deploy.MultiPrimary, tt.members, tt.cluster, testOpts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, gw, _ := refs(p); !reflect.DeepEqual(gw, tt.wantGW) {
				t.Errorf("gateways = %v\nwant %v", gw, tt.wantGW)
			}
			hasPort := false
			if p.Gateway != nil {
				for _, port := range p.Gateway.Ports {
					hasPort = hasPort || port == Port{"tls-kube-api", 6443}
				}
				svc := p.Gateway.Service()
				n := 0
				for _, sp := range svc.Spec.Ports {
					if *sp.Name == "tls-kube-api" && *sp.Port == 6443 && sp.TargetPort.IntValue() == 6443 {
						n++
					}
				}
				if n != 0 != tt.wantPort {
					t.Errorf("Service port tls-kube-api 6443: %d, want %v", n, tt.wantPort)
				}
			}
			if hasPort != tt.wantPort {
				t.Errorf("gateway port tls-kube-api 6443: %v, want %v", hasPort, tt.wantPort)
			}
		})
	}
}
