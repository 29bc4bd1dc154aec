package gateways

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
)

func ambientMembers() []deploy.Member {
	return []deploy.Member{
		{Name: "east", Role: deploy.RolePrimary, Network: "network1", DataplaneMode: deploy.DataplaneAmbient},
		{Name: "west", Role: deploy.RolePrimary, Network: "network2", DataplaneMode: deploy.DataplaneAmbient},
	}
}

func ambientPlan(t *testing.T, opts deploy.Options, cluster string) ClusterPlan {
	t.Helper()
	l, err := deploy.Compile(deploy.MultiPrimary, ambientMembers(), deploy.Namespaces{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := PlanCluster(l, cluster, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAmbientGateway: an ambient cluster's only gateway object is the
// Gateway API Gateway of class istio-east-west with the network label and
// the mesh listener on 15008 (HBONE, terminated with ISTIO_MUTUAL); a
// Service type other than LoadBalancer is the istio annotation, a fixed
// address spec.addresses. No classic gateway workload, no 15443 Gateway.
func TestAmbientGateway(t *testing.T) {
	tests := []struct {
		name        string
		exposure    deploy.Exposure
		annotations map[string]any
		addresses   []any
	}{
		{"load balancer", deploy.Exposure{}, nil, nil},
		{"node port", deploy.Exposure{Type: corev1.ServiceTypeNodePort}, map[string]any{ServiceTypeAnnotation: "NodePort"}, nil},
		{"fixed IP", deploy.Exposure{Address: "192.0.2.7"}, nil, []any{map[string]any{"type": "IPAddress", "value": "192.0.2.7"}}},
		{"fixed name", deploy.Exposure{Type: corev1.ServiceTypeClusterIP, Address: "ew.example.com"},
			map[string]any{ServiceTypeAnnotation: "ClusterIP"}, []any{map[string]any{"type": "Hostname", "value": "ew.example.com"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOpts
			opts.Exposure = map[string]deploy.Exposure{"west": tt.exposure}
			p := ambientPlan(t, opts, "west")
			_, gw, _ := refs(p)
			if want := []string{"Gateway istio-system/istio-eastwestgateway"}; !reflect.DeepEqual(gw, want) {
				t.Fatalf("gateway objects %v, want %v", gw, want)
			}
			u := p.Gateways[0].Unstructured()
			if u.GetAPIVersion() != GatewayAPIVersion {
				t.Errorf("apiVersion %s, want %s", u.GetAPIVersion(), GatewayAPIVersion)
			}
			if got := u.GetLabels()[NetworkLabel]; got != "network2" {
				t.Errorf("label %s=%q, want network2", NetworkLabel, got)
			}
			spec := u.Object["spec"].(map[string]any)
			want := map[string]any{
				"gatewayClassName": "istio-east-west",
				"listeners": []any{map[string]any{
					"name": "mesh", "port": int64(15008), "protocol": "HBONE",
					"tls": map[string]any{"mode": "Terminate", "options": map[string]any{"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}},
				}},
			}
			if tt.addresses != nil {
				want["addresses"] = tt.addresses
			}
			if !reflect.DeepEqual(spec, want) {
				t.Errorf("spec %#v\nwant %#v", spec, want)
			}
			got := map[string]any{}
			if v, ok := u.GetAnnotations()[ServiceTypeAnnotation]; ok {
				got[ServiceTypeAnnotation] = v
			}
			if tt.annotations == nil {
				tt.annotations = map[string]any{}
			}
			if !reflect.DeepEqual(got, tt.annotations) {
				t.Errorf("service type annotation %v, want %v", got, tt.annotations)
			}
			if p.Gateway == nil || !p.Gateway.Ambient || p.Gateway.Name != EastWestName {
				t.Errorf("plan gateway %+v, want the ambient %s", p.Gateway, EastWestName)
			}
		})
	}
}

// TestAmbientHelmReleases: the upstream charts get the same ambient setup
// as the Sail resources: cni and istiod with profile ambient, ztunnel with
// multiCluster.clusterName and global.network (as Istio's guide sets
// them), istiod with the multi-network env; and no gateway chart, since
// istiod deploys the ambient gateway from its Gateway.
func TestAmbientHelmReleases(t *testing.T) {
	opts := testOpts
	opts.NoCNI = false
	p := ambientPlan(t, opts, "east")
	byName := map[string]HelmRelease{}
	var names []string
	for _, r := range p.HelmReleases() {
		byName[r.Name] = r
		names = append(names, r.Name)
	}
	if want := []string{"istio-cni", "ztunnel", "istiod"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("releases %v, want %v", names, want)
	}
	for _, c := range []struct {
		release, path string
		want          any
	}{
		{"istio-cni", "profile", "ambient"},
		{"ztunnel", "multiCluster.clusterName", "east"},
		{"ztunnel", "global.network", "network1"},
		{"ztunnel", "network", nil},
		{"istiod", "profile", "ambient"},
		{"istiod", "global.multiCluster.clusterName", "east"},
		{"istiod", "global.network", "network1"},
		{"istiod", "pilot.env.AMBIENT_ENABLE_MULTI_NETWORK", "true"},
		{"istiod", "pilot.trustedZtunnelNamespace", "ztunnel"},
	} {
		if got := field(byName[c.release].Values, c.path); got != c.want {
			t.Errorf("%s values %s = %v, want %v", c.release, c.path, got, c.want)
		}
	}
	if ns := byName["ztunnel"].Namespace; ns != "ztunnel" {
		t.Errorf("ztunnel release namespace %s, want ztunnel", ns)
	}
}
