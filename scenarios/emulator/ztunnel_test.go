package emulator

import (
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/scenarios/emulator/workloadapi"
)

func TestZtunnelServiceBackends(t *testing.T) {
	const host = "helloworld.sample.svc.cluster.local"
	svc := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: "helloworld", Namespace: "sample", Hostname: host,
		Ports: []*workloadapi.Port{{ServicePort: 5000, TargetPort: 5000}},
	}}}
	member := map[string]*workloadapi.PortList{"sample/" + host: {Ports: []*workloadapi.Port{{ServicePort: 5000, TargetPort: 5000}}}}
	ip := func(s string) [][]byte { return [][]byte{netip.MustParseAddr(s).AsSlice()} }
	gw := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Network: "network2", Address: netip.MustParseAddr("127.0.2.10").AsSlice()}}}
	wl := func(w *workloadapi.Workload) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	tests := []struct {
		name  string
		addrs []*workloadapi.Address
		want  []string // ip, or "gw:<name>" for a backend through its gateway
	}{
		{
			name: "local healthy workloads of the service, by address",
			addrs: []*workloadapi.Address{svc,
				wl(&workloadapi.Workload{Name: "b", Addresses: ip("10.0.1.6"), Network: "network1", Services: member}),
				wl(&workloadapi.Workload{Name: "a", Addresses: ip("10.0.1.5"), Network: "network1", Services: member}),
				wl(&workloadapi.Workload{Name: "other", Addresses: ip("10.0.1.7"), Network: "network1"}),
			},
			want: []string{"10.0.1.5", "10.0.1.6"},
		},
		{
			name: "an unhealthy workload is left out",
			addrs: []*workloadapi.Address{svc,
				wl(&workloadapi.Workload{Name: "a", Addresses: ip("10.0.1.5"), Network: "network1", Services: member, Status: workloadapi.WorkloadStatus_UNHEALTHY}),
			},
		},
		{
			name: "another network's coalesced workload goes through its gateway, once per workload it stands for",
			addrs: []*workloadapi.Address{svc,
				wl(&workloadapi.Workload{Name: "a", Addresses: ip("10.0.1.5"), Network: "network1", Services: member}),
				wl(&workloadapi.Workload{Name: "remote", Network: "network2", Services: member, NetworkGateway: gw, Capacity: wrapperspb.UInt32(2)}),
			},
			want: []string{"gw:remote", "gw:remote", "10.0.1.5"},
		},
		{
			name: "another network's workload without a gateway is not reachable",
			addrs: []*workloadapi.Address{svc,
				wl(&workloadapi.Workload{Name: "remote", Addresses: ip("10.0.2.5"), Network: "network2", Services: member}),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := &ztunnel{env: map[string]string{"NETWORK": "network1"}, addrs: map[string]*workloadapi.Address{}}
			for i, a := range tt.addrs {
				z.addrs[string(rune('a'+i))] = a
			}
			got, backends := z.service(host, 5000)
			if got == nil {
				t.Fatal("service not found")
			}
			var names []string
			for _, b := range backends {
				if b.gateway != nil {
					names = append(names, "gw:"+b.w.Name)
				} else {
					names = append(names, b.ip)
				}
			}
			if !slices.Equal(names, tt.want) {
				t.Errorf("backends %v, want %v", names, tt.want)
			}
		})
	}
}

func TestAmbientPod(t *testing.T) {
	ambientNS := map[string]map[string]string{"amb": {dataplaneModeLabel: dataplaneAmbient}, "plain": {}}
	v := &clusterView{namespaces: ambientNS}
	pod := func(ns string, labels map[string]string, containers ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Labels: labels}}
		for _, c := range containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
		}
		return p
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"namespace labelled ambient", pod("amb", nil, "app"), true},
		{"namespace without the label", pod("plain", nil, "app"), false},
		{"pod opts out with none", pod("amb", map[string]string{dataplaneModeLabel: "none"}, "app"), false},
		{"pod opts in itself", pod("plain", map[string]string{dataplaneModeLabel: dataplaneAmbient}, "app"), true},
		{"a sidecar wins", pod("amb", nil, "app", "istio-proxy"), false},
		{"ztunnel's own pod", pod("amb", map[string]string{"app": "ztunnel", "app.kubernetes.io/name": "ztunnel"}, "istio-proxy"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ambientPod(v, tt.pod); got != tt.want {
				t.Errorf("ambientPod = %v, want %v", got, tt.want)
			}
		})
	}
}
