package gateways

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/deploy"
)

func TestHelmReleases(t *testing.T) {
	pr := []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	ecp := []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1")}
	tests := []struct {
		name     string
		topology deploy.Topology
		members  []deploy.Member
		cluster  string
		want     []string       // release/chart/namespace
		values   map[string]any // "release:dotted.path" -> value
	}{
		{
			name: "primary serving a remote", topology: deploy.PrimaryRemote, members: pr, cluster: "east",
			want: []string{"istio-cni/cni/istio-cni", "istiod/istiod/istio-system", "istio-eastwestgateway/gateway/istio-system"},
			values: map[string]any{
				"istiod:global.externalIstiod":         true,
				"istiod:global.network":                "n1",
				"istio-eastwestgateway:networkGateway": "n1",
				"istio-eastwestgateway:service.type":   "LoadBalancer",
				"istio-eastwestgateway:labels.istio":   "eastwestgateway",
			},
		},
		{
			name: "remote", topology: deploy.PrimaryRemote, members: pr, cluster: "west",
			want: []string{"istio-cni/cni/istio-cni", "istiod/istiod/istio-system", "istio-eastwestgateway/gateway/istio-system"},
			values: map[string]any{
				"istiod:profile":                   "remote",
				"istiod:global.remotePilotAddress": "192.0.2.10",
			},
		},
		{
			name: "control-plane cluster", topology: deploy.ExternalControlPlane, members: ecp, cluster: "east",
			want: []string{"istiod/istiod/istio-system", "istiod-external-istiod/istiod/external-istiod", "istio-ingressgateway/gateway/istio-system"},
			values: map[string]any{
				"istiod-external-istiod:revision":     "external-istiod",
				"istiod-external-istiod:profile":      "empty",
				"istio-ingressgateway:networkGateway": nil,
				"istio-ingressgateway:labels.istio":   "ingressgateway",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planCluster(tt.topology, tt.members, tt.cluster, deploy.Options{MeshID: "mesh1", Version: "1.30.3"}, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			byName := map[string]map[string]any{}
			for _, r := range p.HelmReleases() {
				got = append(got, r.Name+"/"+r.Chart+"/"+r.Namespace)
				byName[r.Name] = r.Values
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("releases = %v, want %v", got, tt.want)
			}
			for key, want := range tt.values {
				release, path, _ := strings.Cut(key, ":")
				if v := field(byName[release], path); !reflect.DeepEqual(v, want) {
					t.Errorf("%s = %#v, want %#v", key, v, want)
				}
			}
		})
	}
}

func TestRenderHelm(t *testing.T) {
	plans, err := planMesh(deploy.PrimaryRemote, []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, deploy.Options{MeshID: "mesh1", Version: "1.30.3", NoCNI: true}, map[string]string{"east": "192.0.2.10"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := RenderHelm(dir, plans, "1.30.3")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "helm", "west", "istiod.values.yaml")
	data, err := os.ReadFile(want)
	if err != nil {
		t.Fatalf("%v (wrote %v)", err, paths)
	}
	if !strings.HasPrefix(string(data), "# helm upgrade --install istiod istio/istiod -n istio-system --version 1.30.3 -f istiod.values.yaml\n") ||
		!strings.Contains(string(data), "remotePilotAddress: 192.0.2.10") {
		t.Errorf("%s:\n%s", want, data)
	}
}

func field(m map[string]any, path string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(m, strings.Split(path, ".")...)
	return v
}

// TestHelmTrustDomain: every istiod release of every topology carries the
// plan's trust domain in meshConfig.trustDomain, as the Sail resources do,
// and the rendered values file holds it.
func TestHelmTrustDomain(t *testing.T) {
	opts := deploy.Options{MeshID: "mesh1", Version: "1.30.3", TrustDomain: "flotilla.example"}
	tests := []struct {
		name     string
		topology deploy.Topology
		members  []deploy.Member
		istiods  int
	}{
		{"multi-primary", deploy.MultiPrimary, []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}, 2},
		{"primary-remote", deploy.PrimaryRemote, []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}, 2},
		{"external control plane", deploy.ExternalControlPlane, []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1")}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plans, err := planMesh(tt.topology, tt.members, opts, map[string]string{"east": "192.0.2.10"})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, p := range plans {
				for _, r := range p.HelmReleases() {
					if r.Chart != "istiod" {
						continue
					}
					n++
					if got := field(r.Values, "meshConfig.trustDomain"); got != "flotilla.example" {
						t.Errorf("%s: release %s: meshConfig.trustDomain = %#v, want flotilla.example", p.Cluster, r.Name, got)
					}
				}
			}
			if n != tt.istiods {
				t.Errorf("%d istiod releases, want %d", n, tt.istiods)
			}
			dir := t.TempDir()
			if _, err := RenderHelm(dir, plans, "1.30.3"); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(dir, "helm", "west", "istiod"+map[bool]string{true: "-external-istiod"}[tt.topology == deploy.ExternalControlPlane]+".values.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), "trustDomain: flotilla.example") {
				t.Errorf("west's istiod values file lacks the trust domain:\n%s", data)
			}
		})
	}
}
