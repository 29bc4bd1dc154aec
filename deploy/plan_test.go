package deploy

import (
	"cmp"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func member(name string, role Role, network string) Member {
	return Member{Name: name, Role: role, Network: network}
}

var testOpts = Options{MeshID: "mesh1", Version: "1.30.3", NoCNI: true}

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		topology Topology
		members  []Member
		wantErr  string
	}{
		{"multi-primary, two networks", MultiPrimary, []Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, ""},
		{"multi-primary, one shared network", MultiPrimary, []Member{member("east", "primary", "n1"), member("west", "primary", "n1")}, ""},
		{"multi-primary, no networks", MultiPrimary, []Member{member("east", "", ""), member("west", "", "")}, ""},
		{"role defaults to primary", MultiPrimary, []Member{member("east", "", "n1")}, ""},
		{"primary-remote", PrimaryRemote, []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, ""},
		{"external control plane", ExternalControlPlane, []Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1")}, ""},
		{"unknown topology", "mesh-of-meshes", []Member{member("east", "primary", "n1")}, `unknown topology "mesh-of-meshes"`},
		{"no clusters", MultiPrimary, nil, "no clusters"},
		{"remote with no primary", PrimaryRemote, []Member{member("east", "remote", "n1"), member("west", "remote", "n2")}, "needs a primary cluster in the mesh, and there is none"},
		{"remote naming a missing primary", PrimaryRemote, []Member{member("east", "primary", "n1"), {Name: "west", Role: "remote", Network: "n2", ControlPlane: "north"}}, `controlPlane "north" is not a primary cluster`},
		{"data plane with no control plane", ExternalControlPlane, []Member{member("west", "data-plane", "n1")}, "needs a control-plane cluster"},
		{"control plane serving nobody", ExternalControlPlane, []Member{member("east", "control-plane", "n1"), member("north", "control-plane", "n1"), {Name: "west", Role: "data-plane", Network: "n1", ControlPlane: "east"}}, "north: control-plane cluster serves no data-plane cluster"},
		{"role outside topology", MultiPrimary, []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, `role "remote" is not part of topology multi-primary`},
		{"duplicate cluster", MultiPrimary, []Member{member("east", "primary", "n1"), member("east", "primary", "n2")}, "listed twice"},
		{"invalid cluster name", MultiPrimary, []Member{member("East_1", "primary", "n1")}, "invalid name"},
		{"invalid network", MultiPrimary, []Member{member("east", "primary", "net work")}, "not a valid label value"},
		{"networks named for some clusters only", MultiPrimary, []Member{member("east", "primary", "n1"), member("west", "primary", "")}, "clusters east name a network and west do not"},
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
	pr := []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	ecp := []Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}
	mp := []Member{member("east", "primary", "n1"), member("west", "primary", "n2")}
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
		topology Topology
		members  []Member
		opts     Options
		cluster  string
		istio    string
		want     map[string]any // dotted path -> value; nil value = absent
	}{
		{
			name: "multi-primary", topology: MultiPrimary, members: mp, cluster: "west", istio: "default",
			want: map[string]any{
				"version": "v1.30.3", "namespace": "istio-system", "profile": nil,
				"values.global.meshID": "mesh1", "values.global.multiCluster.clusterName": "west", "values.global.network": "n2",
				"values.global.externalIstiod": nil,
			},
		},
		{
			name: "primary serving remotes", topology: PrimaryRemote, members: pr, cluster: "east", istio: "default",
			want: map[string]any{
				"values.global.externalIstiod": true, "values.global.meshID": "mesh1",
				"values.global.multiCluster.clusterName": "east", "values.global.network": "n1",
			},
		},
		{
			name: "remote", topology: PrimaryRemote, members: pr, cluster: "west", istio: "default",
			want: map[string]any{
				"profile": "remote", "values.global.remotePilotAddress": "192.0.2.10",
				"values.istiodRemote.injectionPath":      "/inject/cluster/west/net/n2",
				"values.global.multiCluster.clusterName": "west", "values.global.network": "n2",
			},
		},
		{
			name: "control-plane cluster's own control plane", topology: ExternalControlPlane, members: ecp, cluster: "east", istio: "default",
			want: map[string]any{"namespace": "istio-system", "profile": nil, "values.global.network": "n1"},
		},
		{
			name: "external istiod", topology: ExternalControlPlane, members: ecp, cluster: "east", istio: "external-istiod",
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
			name: "config cluster", topology: ExternalControlPlane, members: ecp, cluster: "west", istio: "external-istiod",
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
			name: "second data-plane cluster reads no config", topology: ExternalControlPlane, members: ecp, cluster: "north", istio: "external-istiod",
			want: map[string]any{
				"profile": "remote", "values.global.configCluster": nil, "values.pilot": nil,
				"values.global.remotePilotAddress": "192.0.2.10", "values.istiodRemote.injectionPath": "/inject/cluster/north/net/n2",
			},
		},
		{
			name: "extra values merge over flotilla's (cert-manager hook)", topology: PrimaryRemote, members: pr, opts: certManager, cluster: "east", istio: "default",
			want: map[string]any{
				"values.global.caAddress": "flotilla-csr.flotilla.svc:443", "values.pilot.env.ENABLE_CA_SERVER": "false",
				"values.global.meshID": "mesh1", "values.global.externalIstiod": true, "values.global.logging.level": "default:debug",
			},
		},
		{
			name: "cluster values stay with their cluster", topology: PrimaryRemote, members: pr, opts: certManager, cluster: "west", istio: "default",
			want: map[string]any{"values.global.caAddress": "flotilla-csr.flotilla.svc:443", "values.global.logging": nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if opts.MeshID == "" {
				opts = testOpts
			}
			p, err := planCluster(tt.topology, tt.members, tt.cluster, opts, addrs)
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
	pr := []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
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
		{name: "fixed address of a non-LoadBalancer gateway is known", opts: Options{Exposure: map[string]Exposure{"east": {Type: corev1.ServiceTypeNodePort, Address: "198.51.100.4"}}}, wantAddr: "198.51.100.4"},
		{name: "fixed LoadBalancer address waits for the allocator", opts: Options{Exposure: map[string]Exposure{"east": {Address: "198.51.100.4"}}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.MeshID, opts.Version, opts.NoCNI = "mesh1", "1.30.3", true
			p, err := planCluster(PrimaryRemote, pr, "west", opts, tt.addrs)
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
		topology        Topology
		members         []Member
		cluster         string
		wantNS          string
		wantNetwork     string
		wantControlAnno string
	}{
		{"primary", MultiPrimary, []Member{member("east", "primary", "n1")}, "east", "istio-system", "n1", ""},
		{"unnamed network leaves no label", MultiPrimary, []Member{member("east", "primary", "")}, "east", "istio-system", "", ""},
		{"remote names its primary", PrimaryRemote, []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, "west", "istio-system", "n2", "east"},
		{"data plane labels the external namespace", ExternalControlPlane, []Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n2")}, "west", "external-istiod", "n2", ""},
		{"a second data plane names the config cluster", ExternalControlPlane,
			[]Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n2"), member("north", "data-plane", "n3")}, "north", "external-istiod", "n3", "west"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planCluster(tt.topology, tt.members, tt.cluster, testOpts, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			ns := p.Setup[0].Unstructured()
			if ns.GetName() != tt.wantNS || p.Namespace != tt.wantNS {
				t.Errorf("namespace = %s (plan %s), want %s", ns.GetName(), p.Namespace, tt.wantNS)
			}
			if got := ns.GetLabels()[NetworkLabel]; got != tt.wantNetwork {
				t.Errorf("network label = %q, want %q", got, tt.wantNetwork)
			}
			if got := ns.GetAnnotations()[ControlPlaneClustersAnnotation]; got != tt.wantControlAnno {
				t.Errorf("controlPlaneClusters = %q, want %q", got, tt.wantControlAnno)
			}
		})
	}
}

func TestMergeValues(t *testing.T) {
	base := map[string]any{"global": map[string]any{"meshID": "m", "network": "n1"}, "pilot": map[string]any{"enabled": true}}
	got := MergeValues(base, map[string]any{"global": map[string]any{"network": "n2", "caAddress": "x"}, "pilot": "replaced"})
	want := map[string]any{"global": map[string]any{"meshID": "m", "network": "n2", "caAddress": "x"}, "pilot": "replaced"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merge = %v, want %v", got, want)
	}
	if base["global"].(map[string]any)["network"] != "n1" {
		t.Error("merge modified its input")
	}
}

// planCluster compiles the topology and plans one cluster of it.
func planCluster(topology Topology, members []Member, cluster string, opts Options, addrs map[string]string) (ClusterPlan, error) {
	l, err := Compile(topology, members, Namespaces{})
	if err != nil {
		return ClusterPlan{}, err
	}
	return PlanCluster(l, cluster, opts, addrs)
}

// TestTrustDomain: a non-default trust domain reaches meshConfig.trustDomain
// of every Istio resource of every role and topology (beside the values a
// role already sets in meshConfig); the default, named or not, writes
// nothing, so meshes on cluster.local keep their resources unchanged.
func TestTrustDomain(t *testing.T) {
	mp := []Member{member("east", "primary", "n1"), member("west", "primary", "n2")}
	pr := []Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	ecp := []Member{member("east", "control-plane", "n1"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")}
	amb := []Member{ambientMember("east", "primary", "n1"), ambientMember("west", "primary", "n2")}
	resources := []struct {
		name     string
		topology Topology
		members  []Member
		cluster  string
		istio    string
	}{
		{"multi-primary", MultiPrimary, mp, "west", IstioName},
		{"primary serving remotes", PrimaryRemote, pr, "east", IstioName},
		{"remote", PrimaryRemote, pr, "west", IstioName},
		{"control-plane cluster's own", ExternalControlPlane, ecp, "east", IstioName},
		{"external istiod", ExternalControlPlane, ecp, "east", ExternalIstiodName},
		{"config cluster", ExternalControlPlane, ecp, "west", ExternalIstiodName},
		{"second data plane", ExternalControlPlane, ecp, "north", ExternalIstiodName},
		{"ambient primary", MultiPrimary, amb, "east", IstioName},
	}
	for _, td := range []struct {
		trustDomain string
		want        any
	}{
		{"flotilla.example", "flotilla.example"},
		{"cluster.local", nil},
		{"", nil},
	} {
		for _, r := range resources {
			t.Run(r.name+"/"+cmp.Or(td.trustDomain, "unset"), func(t *testing.T) {
				opts := testOpts
				opts.TrustDomain = td.trustDomain
				p, err := planCluster(r.topology, r.members, r.cluster, opts, map[string]string{"east": "192.0.2.10"})
				if err != nil {
					t.Fatal(err)
				}
				spec := istioSpec(t, p, r.istio)
				if got := field(spec, "values.meshConfig.trustDomain"); !reflect.DeepEqual(got, td.want) {
					t.Errorf("values.meshConfig.trustDomain = %#v, want %#v", got, td.want)
				}
				if r.istio == ExternalIstiodName && r.cluster == "east" {
					if got := field(spec, "values.meshConfig.rootNamespace"); got != "external-istiod" {
						t.Errorf("values.meshConfig.rootNamespace = %#v, want the external istiod's namespace beside the trust domain", got)
					}
				}
			})
		}
	}
}
