package server

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestAmbientGatewayCheck: the check passes only for a Gateway of class
// istio-east-west carrying its cluster's network label; each failure says
// what is wrong with which Gateway.
func TestAmbientGatewayCheck(t *testing.T) {
	ok := AmbientGatewayStatus{Namespace: "istio-system", Name: "istio-eastwestgateway", Found: true, Class: "istio-east-west", NetworkLabel: "n1"}
	with := func(f func(*AmbientGatewayStatus)) *AmbientGatewayStatus { g := ok; f(&g); return &g }
	tests := []struct {
		name    string
		gw      *AmbientGatewayStatus
		wantOK  bool
		message string
	}{
		{"sidecar cluster", nil, false, ""},
		{"labelled", &ok, true, "Gateway istio-system/istio-eastwestgateway, network n1"},
		{"no network label", with(func(g *AmbientGatewayStatus) { g.NetworkLabel = "" }), false, `has topology.istio.io/network="", want "n1"`},
		{"another network", with(func(g *AmbientGatewayStatus) { g.NetworkLabel = "n2" }), false, `topology.istio.io/network="n2", want "n1"`},
		{"missing", with(func(g *AmbientGatewayStatus) { g.Found = false }), false, "no Gateway istio-system/istio-eastwestgateway"},
		{"another class", with(func(g *AmbientGatewayStatus) { g.Class = "istio" }), false, `gatewayClassName "istio", want istio-east-west`},
		{"no Gateway API", with(func(g *AmbientGatewayStatus) { g.Error = "east: Gateway API: no matches" }), false, "Gateway API"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ck := ambientGatewayCheck(ClusterStatus{Name: "east", Network: "n1", AmbientGateway: tt.gw})
			if tt.gw == nil {
				if ck != nil {
					t.Fatalf("check %+v for a cluster without an ambient gateway", ck)
				}
				return
			}
			if ck.OK != tt.wantOK || !strings.Contains(ck.Message, tt.message) {
				t.Errorf("check %+v, want ok %v and a message with %q", ck, tt.wantOK, tt.message)
			}
			if !ck.OK && ck.Hint == "" {
				t.Error("a failure without a hint")
			}
		})
	}
}

// TestGlobalServicesCheck: a service in several ambient clusters that is
// not istio.io/global=true in every one of them fails the check, naming
// the service and the clusters it is local in; services in one cluster
// only are not the check's business.
func TestGlobalServicesCheck(t *testing.T) {
	tests := []struct {
		name     string
		services map[string]map[string]bool // cluster -> service -> global
		wantNil  bool
		wantOK   bool
		message  string
	}{
		{"sidecar mesh", map[string]map[string]bool{"east": nil, "west": nil}, true, false, ""},
		{"one ambient cluster", map[string]map[string]bool{"east": {"sample/helloworld": false}}, true, false, ""},
		{"global everywhere", map[string]map[string]bool{"east": {"sample/helloworld": true}, "west": {"sample/helloworld": true}}, false, true, "1 shared service(s), all global"},
		{"local in one cluster", map[string]map[string]bool{"east": {"sample/helloworld": true, "sample/curl": false}, "west": {"sample/helloworld": false}}, false, false,
			"service sample/helloworld is in east, west but not istio.io/global=true in west"},
		{"local everywhere", map[string]map[string]bool{"east": {"a/b": false}, "west": {"a/b": false}}, false, false, "not istio.io/global=true in east, west"},
		{"only in one cluster each", map[string]map[string]bool{"east": {"a/x": false}, "west": {"a/y": false}}, false, true, "0 shared service(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &Status{}
			for _, name := range []string{"east", "west"} {
				svcs, ok := tt.services[name]
				if !ok {
					continue
				}
				var scopes map[string]ServiceScope
				if svcs != nil {
					scopes = map[string]ServiceScope{}
					for svc, global := range svcs {
						scopes[svc] = ServiceScope{Global: global, Endpoints: 1}
					}
				}
				st.Clusters = append(st.Clusters, ClusterStatus{Name: name, Services: scopes})
			}
			ck := globalServicesCheck(st)
			if tt.wantNil {
				if ck != nil {
					t.Fatalf("check %+v, want none", ck)
				}
				return
			}
			if ck == nil {
				t.Fatal("no check")
			}
			if ck.OK != tt.wantOK || !strings.Contains(ck.Message, tt.message) {
				t.Errorf("check %+v, want ok %v and a message with %q", ck, tt.wantOK, tt.message)
			}
			if !ck.OK && !strings.Contains(ck.Hint, "kubectl label service -n") {
				t.Errorf("hint %q names no label command", ck.Hint)
			}
		})
	}
}

// TestIstiodAmbientNetworks: in an ambient mesh istiod must know each
// network's gateway with its HBONE port; a classic gateway (15443 only)
// does not count.
func TestIstiodAmbientNetworks(t *testing.T) {
	view := func(gws ...NetworkGateway) []IstiodView {
		return []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", Gateways: gws}}
	}
	tests := []struct {
		name    string
		istiods []IstiodView
		ok      bool
		message string
	}{
		{"both HBONE", view(NetworkGateway{Network: "n1", Addr: "192.0.2.1", HBONEPort: 15008}, NetworkGateway{Network: "n2", Addr: "192.0.2.2", HBONEPort: 15008}),
			true, "HBONE gateways (port 15008) of n1, n2"},
		{"one without HBONE", view(NetworkGateway{Network: "n1", Addr: "192.0.2.1", HBONEPort: 15008}, NetworkGateway{Network: "n2", Addr: "192.0.2.2", Port: 15443}),
			false, "knows no HBONE gateway (port 15008) of network n2"},
		{"one missing", view(NetworkGateway{Network: "n1", Addr: "192.0.2.1", HBONEPort: 15008}), false, "of network n2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ck := istiodNetworksCheck(ClusterStatus{Name: "east", Istiods: tt.istiods}, []string{"n1", "n2"}, true)
			if ck == nil || ck.OK != tt.ok || !strings.Contains(ck.Message, tt.message) {
				t.Errorf("check %+v, want ok %v and a message with %q", ck, tt.ok, tt.message)
			}
		})
	}
}

// TestNetworkzHBONEPort: istiod writes model.NetworkGateway without JSON
// tags; its HBONEPort decodes into NetworkGateway.HBONEPort.
func TestNetworkzHBONEPort(t *testing.T) {
	body := `[{"Network":"network2","Cluster":"west","Addr":"127.0.0.42","Port":0,"HBONEPort":15008,"ServiceAccount":{"Namespace":"istio-system","Name":"istio-eastwestgateway"}}]`
	var got []NetworkGateway
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := NetworkGateway{Network: "network2", Cluster: "west", Addr: "127.0.0.42", HBONEPort: 15008}
	if len(got) != 1 || got[0] != want {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
}

// TestServiceClusters: ambientz's workloads (protobuf JSON of the workload
// API) give, per service, the clusters its workloads are in.
func TestServiceClusters(t *testing.T) {
	body := `{"workloads":[
 {"uid":"east//Pod/sample/helloworld-v1-1","name":"helloworld-v1-1","namespace":"sample","clusterId":"east","network":"network1",
  "services":{"sample/helloworld.sample.svc.cluster.local":{"ports":[{"servicePort":5000,"targetPort":5000}]}}},
 {"uid":"west//Pod/sample/helloworld-v2-1","name":"helloworld-v2-1","namespace":"sample","clusterId":"west","network":"network2",
  "services":{"sample/helloworld.sample.svc.cluster.local":{}}},
 {"uid":"east//Pod/sample/curl-1","name":"curl-1","namespace":"sample","clusterId":"east"}
],"services":[{"name":"helloworld","namespace":"sample","hostname":"helloworld.sample.svc.cluster.local"}],"policies":[]}`
	got, err := serviceClusters([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][]string{"sample/helloworld": {"east", "west"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("service clusters %v, want %v", got, want)
	}
}

// TestGlobalEndpointsCheck: an ambient istiod must see workloads of a
// global service from every cluster where it has ready endpoints.
func TestGlobalEndpointsCheck(t *testing.T) {
	global := func(n int) ServiceScope { return ServiceScope{Global: true, Endpoints: n} }
	tests := []struct {
		name     string
		services map[string]map[string]ServiceScope
		view     map[string][]string
		wantNil  bool
		ok       bool
		message  string
	}{
		{"both clusters seen", map[string]map[string]ServiceScope{"east": {"sample/helloworld": global(1)}, "west": {"sample/helloworld": global(1)}},
			map[string][]string{"sample/helloworld": {"east", "west"}}, false, true, "1 global service(s) with endpoints from every cluster"},
		{"west's endpoints missing", map[string]map[string]ServiceScope{"east": {"sample/helloworld": global(1)}, "west": {"sample/helloworld": global(2)}},
			map[string][]string{"sample/helloworld": {"east"}}, false, false, "istiod istio-system/istiod-1 has no workload of sample/helloworld from west"},
		{"no endpoints in west: nothing to expect", map[string]map[string]ServiceScope{"east": {"sample/helloworld": global(1)}, "west": {"sample/helloworld": global(0)}},
			map[string][]string{"sample/helloworld": {"east"}}, true, false, ""},
		{"local somewhere: the other check's", map[string]map[string]ServiceScope{"east": {"a/b": global(1)}, "west": {"a/b": {Endpoints: 1}}},
			nil, true, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &Status{}
			for _, n := range []string{"east", "west"} {
				st.Clusters = append(st.Clusters, ClusterStatus{Name: n, Services: tt.services[n],
					Istiods: []IstiodView{{Namespace: "istio-system", Pod: "istiod-1", ServiceClusters: tt.view}}})
			}
			ck := globalEndpointsCheck(st.Clusters[0], st)
			if tt.wantNil {
				if ck != nil {
					t.Fatalf("check %+v, want none", ck)
				}
				return
			}
			if ck == nil || ck.OK != tt.ok || !strings.Contains(ck.Message, tt.message) {
				t.Errorf("check %+v, want ok %v and a message with %q", ck, tt.ok, tt.message)
			}
		})
	}
}
