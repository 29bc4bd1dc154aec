package deploy

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
)

func member(name string, role federation.Role, network string) federation.Member {
	return federation.Member{Name: name, Role: role, Network: network}
}

var testOpts = Options{MeshID: "mesh1", Version: "1.30.3", NoCNI: true}

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		topology federation.Topology
		members  []federation.Member
		wantErr  string
	}{
		{"multi-primary, two networks", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, ""},
		{"multi-primary, one shared network", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n1")}, ""},
		{"multi-primary, no networks", federation.MultiPrimary, []federation.Member{member("east", "", ""), member("west", "", "")}, ""},
		{"role defaults to primary", federation.MultiPrimary, []federation.Member{member("east", "", "n1")}, ""},
		{"primary-remote", federation.PrimaryRemote, []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, ""},
		{"external control plane", federation.ExternalControlPlane, []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, ""},
		{"unknown topology", "mesh-of-meshes", []federation.Member{member("east", "primary", "n1")}, `unknown topology "mesh-of-meshes"`},
		{"no clusters", federation.MultiPrimary, nil, "no clusters"},
		{"remote with no primary", federation.PrimaryRemote, []federation.Member{member("east", "remote", "n1"), member("west", "remote", "n2")}, "needs a primary cluster in the mesh, and there is none"},
		{"remote naming a missing primary", federation.PrimaryRemote, []federation.Member{member("east", "primary", "n1"), {Name: "west", Role: "remote", Network: "n2", ControlPlane: "north"}}, `controlPlane "north" is not a primary cluster`},
		{"data plane with no control plane", federation.ExternalControlPlane, []federation.Member{member("west", "data-plane", "n1")}, "needs a control-plane cluster"},
		{"control plane serving nobody", federation.ExternalControlPlane, []federation.Member{member("east", "control-plane", "n1"), member("north", "control-plane", "n1"), {Name: "west", Role: "data-plane", Network: "n1", ControlPlane: "east"}}, "north: control-plane cluster serves no data-plane cluster"},
		{"role outside topology", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, `role "remote" is not part of topology multi-primary`},
		{"duplicate cluster", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("east", "primary", "n2")}, "listed twice"},
		{"invalid cluster name", federation.MultiPrimary, []federation.Member{member("East_1", "primary", "n1")}, "invalid name"},
		{"invalid network", federation.MultiPrimary, []federation.Member{member("east", "primary", "net work")}, "not a valid label value"},
		{"networks named for some clusters only", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("west", "primary", "")}, "clusters east name a network and west do not"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.topology, tt.members)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

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
		topology  federation.Topology
		members   []federation.Member
		opts      Options
		cluster   string
		wantSetup []string
		wantGW    []string
		skipGW    bool
		wantCP    []string
	}{
		{
			name: "multi-primary multi-network primary", topology: federation.MultiPrimary,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "multi-primary single network has no gateways", topology: federation.MultiPrimary,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantCP:    []string{"Istio default"},
		},
		{
			name: "IstioCNI and its namespace unless NoCNI", topology: federation.MultiPrimary,
			members: []federation.Member{member("east", "primary", "n1")}, cluster: "east", opts: Options{MeshID: "m", Version: "1.30.3"},
			wantSetup: []string{"Namespace istio-system", "Namespace istio-cni"},
			wantCP:    []string{"IstioCNI default", "Istio default"},
		},
		{
			name: "primary serving a remote on another network", topology: federation.PrimaryRemote,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway", "Gateway istio-system/istiod-gateway", "VirtualService istio-system/istiod-vs"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "primary serving a remote on its network exposes istiod only", topology: federation.PrimaryRemote,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n1")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/istiod-gateway", "VirtualService istio-system/istiod-vs"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "remote on another network", topology: federation.PrimaryRemote,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantGW:    cat(ew, []string{"Gateway istio-system/cross-network-gateway"}),
			wantCP:    []string{"Istio default"},
		},
		{
			name: "remote on the primary's network has no gateway", topology: federation.PrimaryRemote,
			members: []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace istio-system"},
			wantCP:    []string{"Istio default"},
		},
		{
			name: "control-plane cluster", topology: federation.ExternalControlPlane,
			members: []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "east",
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
			name: "control-plane cluster runs no IstioCNI", topology: federation.ExternalControlPlane, opts: Options{MeshID: "m", Version: "1.30.3"},
			members: []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "east",
			wantSetup: []string{"Namespace istio-system", "Namespace external-istiod"},
			skipGW:    true, // checked by the previous case
			wantCP:    []string{"Istio default", "Istio external-istiod"},
		},
		{
			name: "data-plane cluster", topology: federation.ExternalControlPlane,
			members: []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, cluster: "west",
			wantSetup: []string{"Namespace external-istiod"},
			wantCP:    []string{"Istio external-istiod"},
		},
		{
			name: "data-plane clusters on two networks get east-west gateways", topology: federation.ExternalControlPlane,
			members: []federation.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, cluster: "north",
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
			p, err := PlanCluster(tt.topology, tt.members, tt.cluster, opts, map[string]string{"east": "192.0.2.10"})
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

// istioSpec returns the spec of the plan's Istio resource named name.
func istioSpec(t *testing.T, p ClusterPlan, name string) map[string]any {
	t.Helper()
	for _, o := range p.ControlPlane {
		u := o.Unstructured()
		if u.GetKind() == "Istio" && u.GetName() == name {
			return u.Object["spec"].(map[string]any)
		}
	}
	t.Fatalf("%s: no Istio %s in plan", p.Cluster, name)
	return nil
}

func field(m map[string]any, path string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(m, strings.Split(path, ".")...)
	return v
}

func TestIstioValues(t *testing.T) {
	pr := []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	ecp := []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}
	mp := []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}
	addrs := map[string]string{"east": "192.0.2.10"}
	certManager := Options{MeshID: "mesh1", Version: "v1.30.3", NoCNI: true,
		Values: map[string]any{
			"global": map[string]any{"caAddress": "flotilla-csr.flotilla.svc:443"},
			"pilot":  map[string]any{"env": map[string]any{"ENABLE_CA_SERVER": "false"}},
		},
		ClusterValues: map[string]map[string]any{"east": {"global": map[string]any{"logging": map[string]any{"level": "default:debug"}}}},
	}
	tests := []struct {
		name     string
		topology federation.Topology
		members  []federation.Member
		opts     Options
		cluster  string
		istio    string
		want     map[string]any // dotted path -> value; nil value = absent
	}{
		{
			name: "multi-primary", topology: federation.MultiPrimary, members: mp, cluster: "west", istio: "default",
			want: map[string]any{
				"version": "v1.30.3", "namespace": "istio-system", "profile": nil,
				"values.global.meshID": "mesh1", "values.global.multiCluster.clusterName": "west", "values.global.network": "n2",
				"values.global.externalIstiod": nil,
			},
		},
		{
			name: "primary serving remotes", topology: federation.PrimaryRemote, members: pr, cluster: "east", istio: "default",
			want: map[string]any{
				"values.global.externalIstiod": true, "values.global.meshID": "mesh1",
				"values.global.multiCluster.clusterName": "east", "values.global.network": "n1",
			},
		},
		{
			name: "remote", topology: federation.PrimaryRemote, members: pr, cluster: "west", istio: "default",
			want: map[string]any{
				"profile": "remote", "values.global.remotePilotAddress": "192.0.2.10",
				"values.istiodRemote.injectionPath":      "/inject/cluster/west/net/n2",
				"values.global.multiCluster.clusterName": "west", "values.global.network": "n2",
			},
		},
		{
			name: "control-plane cluster's own control plane", topology: federation.ExternalControlPlane, members: ecp, cluster: "east", istio: "default",
			want: map[string]any{"namespace": "istio-system", "profile": nil, "values.global.network": "n1"},
		},
		{
			name: "external istiod", topology: federation.ExternalControlPlane, members: ecp, cluster: "east", istio: "external-istiod",
			want: map[string]any{
				"namespace": "external-istiod", "profile": "empty",
				"values.meshConfig.rootNamespace":                  "external-istiod",
				"values.meshConfig.defaultConfig.discoveryAddress": "192.0.2.10:15012",
				"values.pilot.enabled":                             true,
				"values.pilot.env.INJECTION_WEBHOOK_CONFIG_NAME":   "istio-sidecar-injector-external-istiod-external-istiod",
				"values.pilot.env.VALIDATION_WEBHOOK_CONFIG_NAME":  "istio-validator-external-istiod-external-istiod",
				"values.pilot.env.EXTERNAL_ISTIOD":                 "true",
				"values.pilot.env.LOCAL_CLUSTER_SECRET_WATCHER":    "true",
				"values.pilot.env.CLUSTER_ID":                      "west",
				"values.pilot.env.SHARED_MESH_CONFIG":              "istio",
				"values.global.caAddress":                          "192.0.2.10:15012",
				"values.global.istioNamespace":                     "external-istiod",
				"values.global.operatorManageWebhooks":             true,
				"values.global.configValidation":                   false,
				"values.global.meshID":                             "mesh1",
				"values.global.multiCluster.clusterName":           "west",
				"values.global.network":                            "n1",
				"values.pilot.volumes":                             []any{map[string]any{"name": "config-volume", "configMap": map[string]any{"name": "istio-external-istiod"}}, map[string]any{"name": "inject-volume", "configMap": map[string]any{"name": "istio-sidecar-injector-external-istiod"}}},
				"values.pilot.volumeMounts":                        []any{map[string]any{"name": "config-volume", "mountPath": "/etc/istio/config"}, map[string]any{"name": "inject-volume", "mountPath": "/var/lib/istio/inject"}},
			},
		},
		{
			name: "config cluster", topology: federation.ExternalControlPlane, members: ecp, cluster: "west", istio: "external-istiod",
			want: map[string]any{
				"namespace": "external-istiod", "profile": "remote",
				"values.defaultRevision":            "external-istiod",
				"values.global.istioNamespace":      "external-istiod",
				"values.global.remotePilotAddress":  "192.0.2.10",
				"values.global.configCluster":       true,
				"values.pilot.configMap":            true,
				"values.istiodRemote.injectionPath": "/inject/cluster/west/net/n1",
			},
		},
		{
			name: "second data-plane cluster reads no config", topology: federation.ExternalControlPlane, members: ecp, cluster: "north", istio: "external-istiod",
			want: map[string]any{
				"profile": "remote", "values.global.configCluster": nil, "values.pilot": nil,
				"values.global.remotePilotAddress": "192.0.2.10", "values.istiodRemote.injectionPath": "/inject/cluster/north/net/n2",
			},
		},
		{
			name: "extra values merge over flotilla's (cert-manager hook)", topology: federation.PrimaryRemote, members: pr, opts: certManager, cluster: "east", istio: "default",
			want: map[string]any{
				"values.global.caAddress": "flotilla-csr.flotilla.svc:443", "values.pilot.env.ENABLE_CA_SERVER": "false",
				"values.global.meshID": "mesh1", "values.global.externalIstiod": true, "values.global.logging.level": "default:debug",
			},
		},
		{
			name: "cluster values stay with their cluster", topology: federation.PrimaryRemote, members: pr, opts: certManager, cluster: "west", istio: "default",
			want: map[string]any{"values.global.caAddress": "flotilla-csr.flotilla.svc:443", "values.global.logging": nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if opts.MeshID == "" {
				opts = testOpts
			}
			p, err := PlanCluster(tt.topology, tt.members, tt.cluster, opts, addrs)
			if err != nil {
				t.Fatal(err)
			}
			spec := istioSpec(t, p, tt.istio)
			for path, want := range tt.want {
				if got := field(spec, path); !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v", path, got, want)
				}
			}
		})
	}
}

func TestAddresses(t *testing.T) {
	pr := []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	tests := []struct {
		name        string
		opts        Options
		addrs       map[string]string
		wantAddr    string
		wantPending bool
		wantErr     bool
	}{
		{name: "known address", addrs: map[string]string{"east": "192.0.2.10"}, wantAddr: "192.0.2.10"},
		{name: "unknown address is an error", wantErr: true},
		{name: "unknown address pending when allowed", opts: Options{AllowPendingAddress: true}, wantAddr: PendingAddress, wantPending: true},
		{name: "fixed address of a non-LoadBalancer gateway is known", opts: Options{Exposure: map[string]gateways.Exposure{"east": {Type: corev1.ServiceTypeNodePort, Address: "198.51.100.4"}}}, wantAddr: "198.51.100.4"},
		{name: "fixed LoadBalancer address waits for the allocator", opts: Options{Exposure: map[string]gateways.Exposure{"east": {Address: "198.51.100.4"}}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.MeshID, opts.Version, opts.NoCNI = "mesh1", "1.30.3", true
			p, err := PlanCluster(federation.PrimaryRemote, pr, "west", opts, tt.addrs)
			if tt.wantErr {
				var need *AddressNeededError
				if !errors.As(err, &need) || need.Cluster != "west" || need.Of != "east" {
					t.Fatalf("err = %v, want AddressNeededError west needs east", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := field(istioSpec(t, p, "default"), "values.global.remotePilotAddress"); got != tt.wantAddr {
				t.Errorf("remotePilotAddress = %v, want %v", got, tt.wantAddr)
			}
			if p.Pending != tt.wantPending || p.AddressOf != "east" {
				t.Errorf("Pending, AddressOf = %v, %q; want %v, east", p.Pending, p.AddressOf, tt.wantPending)
			}
		})
	}
}

func TestNamespaceLabels(t *testing.T) {
	tests := []struct {
		name            string
		topology        federation.Topology
		members         []federation.Member
		cluster         string
		wantNS          string
		wantNetwork     string
		wantControlAnno string
	}{
		{"primary", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1")}, "east", "istio-system", "n1", ""},
		{"unnamed network leaves no label", federation.MultiPrimary, []federation.Member{member("east", "primary", "")}, "east", "istio-system", "", ""},
		{"remote names its primary", federation.PrimaryRemote, []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, "west", "istio-system", "n2", "east"},
		{"data plane labels the external namespace", federation.ExternalControlPlane, []federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n2")}, "west", "external-istiod", "n2", ""},
		{"a second data plane names the config cluster", federation.ExternalControlPlane,
			[]federation.Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n2"), member("north", "data-plane", "n3")}, "north", "external-istiod", "n3", "west"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanCluster(tt.topology, tt.members, tt.cluster, testOpts, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			ns := p.Setup[0].Unstructured()
			if ns.GetName() != tt.wantNS || p.Namespace != tt.wantNS {
				t.Errorf("namespace = %s (plan %s), want %s", ns.GetName(), p.Namespace, tt.wantNS)
			}
			if got := ns.GetLabels()[gateways.NetworkLabel]; got != tt.wantNetwork {
				t.Errorf("network label = %q, want %q", got, tt.wantNetwork)
			}
			if got := ns.GetAnnotations()[gateways.ControlPlaneClustersAnnotation]; got != tt.wantControlAnno {
				t.Errorf("controlPlaneClusters = %q, want %q", got, tt.wantControlAnno)
			}
		})
	}
}

func TestMergeValues(t *testing.T) {
	base := map[string]any{"global": map[string]any{"meshID": "m", "network": "n1"}, "pilot": map[string]any{"enabled": true}}
	got := mergeValues(base, map[string]any{"global": map[string]any{"network": "n2", "caAddress": "x"}, "pilot": "replaced"})
	want := map[string]any{"global": map[string]any{"meshID": "m", "network": "n2", "caAddress": "x"}, "pilot": "replaced"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merge = %v, want %v", got, want)
	}
	if base["global"].(map[string]any)["network"] != "n1" {
		t.Error("merge modified its input")
	}
}

func TestRenderRoundTrip(t *testing.T) {
	plans, err := Plan(federation.PrimaryRemote, []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, Options{MeshID: "mesh1", Version: "1.30.3"}, map[string]string{"east": "192.0.2.10"})
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
		data, err := RenderYAML(p.Objects())
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeYAML(strings.NewReader(string(data)))
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
	members := []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2"), member("north", "remote", "n3")}
	opts := Options{MeshID: "mesh1", Version: "1.30.3"}
	addrs := map[string]string{"east": "192.0.2.10"}
	for b.Loop() {
		plans, err := Plan(federation.PrimaryRemote, members, opts, addrs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := RenderYAML(plans[0].Objects()); err != nil {
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
		topology federation.Topology
		members  []federation.Member
		cluster  string
		want     string
	}{
		{"multi-primary", federation.MultiPrimary, []federation.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, "east", ""},
		{"remote", federation.PrimaryRemote, []federation.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, "west", ""},
		{"control-plane ingress", federation.ExternalControlPlane, []federation.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, "east", ""},
		{"data plane", federation.ExternalControlPlane, []federation.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}, "north", ExternalIstiodName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanCluster(tt.topology, tt.members, tt.cluster, testOpts, map[string]string{"east": "192.0.2.10"})
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
