package gateways

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

func TestEastWestObjects(t *testing.T) {
	g := EastWest("istio-system", "network1", Exposure{})
	objs, err := g.Objects()
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]*unstructured.Unstructured{}
	var order []string
	for _, o := range objs {
		u := o.Unstructured()
		byKind[u.GetKind()] = u
		order = append(order, u.GetKind())
	}
	wantOrder := []string{"ServiceAccount", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget", "Service", "HorizontalPodAutoscaler"}
	if !reflect.DeepEqual(order, wantOrder) {
		t.Fatalf("object order = %v, want %v", order, wantOrder)
	}
	str := func(u *unstructured.Unstructured, path ...string) string {
		v, _, _ := unstructured.NestedFieldNoCopy(u.Object, path...)
		s, _ := v.(string)
		return s
	}
	dep, svc := byKind["Deployment"], byKind["Service"]
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	c0 := containers[0].(map[string]any)
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	var portList []string
	for _, p := range ports {
		pm := p.(map[string]any)
		portList = append(portList, pm["name"].(string)+"="+jsonNumber(pm["port"]))
	}
	rules, _, _ := unstructured.NestedSlice(byKind["Role"].Object, "rules")

	tests := []struct {
		name string
		got  any
		want any
	}{
		{"all objects in the gateway namespace", namespaces(objs), []string{"istio-system"}},
		{"pod asks for the gateway injection template", str(dep, "spec", "template", "metadata", "annotations", "inject.istio.io/templates"), "gateway"},
		{"pod opts into injection", str(dep, "spec", "template", "metadata", "labels", "sidecar.istio.io/inject"), "true"},
		{"pod carries istio label", str(dep, "spec", "template", "metadata", "labels", "istio"), "eastwestgateway"},
		{"pod carries app label", str(dep, "spec", "template", "metadata", "labels", "app"), "istio-eastwestgateway"},
		{"pod carries network label", str(dep, "spec", "template", "metadata", "labels", NetworkLabel), "network1"},
		{"container is istio-proxy", c0["name"], "istio-proxy"},
		{"image is auto", c0["image"], "auto"},
		{"requested network view", c0["env"], []any{map[string]any{"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": "network1"}}},
		{"service type defaults to LoadBalancer", str(svc, "spec", "type"), "LoadBalancer"},
		{"service ports", portList, []string{"status-port=15021", "tls=15443", "tls-istiod=15012", "tls-webhook=15017"}},
		{"service selects the pods", svc.Object["spec"].(map[string]any)["selector"], map[string]any{"istio": "eastwestgateway", "app": "istio-eastwestgateway"}},
		{"deployment selector leaves the network out (selectors are immutable)", dep.Object["spec"].(map[string]any)["selector"], map[string]any{"matchLabels": map[string]any{"istio": "eastwestgateway", "app": "istio-eastwestgateway"}}},
		{"pods carry the network label", str(dep, "spec", "template", "metadata", "labels", NetworkLabel), "network1"},
		{"service labelled with network", svc.GetLabels()[NetworkLabel], "network1"},
		{"service labelled istio", svc.GetLabels()["istio"], "eastwestgateway"},
		{"SDS role reads secrets", rules, []any{map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"get", "watch", "list"}}}},
		{"role binding binds the gateway account", str(byKind["RoleBinding"], "roleRef", "name"), "istio-eastwestgateway-sds"},
		{"HPA targets the deployment", str(byKind["HorizontalPodAutoscaler"], "spec", "scaleTargetRef", "name"), "istio-eastwestgateway"},
		{"PDB keeps one pod", jsonNumber(byKind["PodDisruptionBudget"].Object["spec"].(map[string]any)["minAvailable"]), "1"},
		{"deployment uses the service account", str(dep, "spec", "template", "spec", "serviceAccountName"), "istio-eastwestgateway-service-account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func namespaces(objs []kube.Object) []string {
	seen := map[string]bool{}
	var out []string
	for _, o := range objs {
		if ns := o.Unstructured().GetNamespace(); !seen[ns] {
			seen[ns] = true
			out = append(out, ns)
		}
	}
	return out
}

// jsonNumber prints a number decoded from JSON (float64) as an integer would.
func jsonNumber(v any) string { return fmt.Sprint(v) }

func TestServiceExposure(t *testing.T) {
	tests := []struct {
		name         string
		exp          Exposure
		wantType     corev1.ServiceType
		wantLBIP     string
		wantExternal []string
		wantNodePort int32 // of port "tls"
	}{
		{name: "default is LoadBalancer", exp: Exposure{}, wantType: corev1.ServiceTypeLoadBalancer},
		{name: "LoadBalancer with fixed address requests it", exp: Exposure{Address: "10.0.0.9"}, wantType: corev1.ServiceTypeLoadBalancer, wantLBIP: "10.0.0.9"},
		{name: "NodePort with pinned port", exp: Exposure{Type: corev1.ServiceTypeNodePort, NodePorts: map[string]int32{"tls": 31443}}, wantType: corev1.ServiceTypeNodePort, wantNodePort: 31443},
		{name: "ClusterIP with fixed address uses externalIPs", exp: Exposure{Type: corev1.ServiceTypeClusterIP, Address: "192.0.2.7"}, wantType: corev1.ServiceTypeClusterIP, wantExternal: []string{"192.0.2.7"}},
		{name: "NodePort with fixed address uses externalIPs", exp: Exposure{Type: corev1.ServiceTypeNodePort, Address: "192.0.2.8"}, wantType: corev1.ServiceTypeNodePort, wantExternal: []string{"192.0.2.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := EastWest("istio-system", "n1", tt.exp).Service().Spec
			if *s.Type != tt.wantType {
				t.Errorf("type = %s, want %s", *s.Type, tt.wantType)
			}
			if got := deref(s.LoadBalancerIP); got != tt.wantLBIP {
				t.Errorf("loadBalancerIP = %q, want %q", got, tt.wantLBIP)
			}
			if !reflect.DeepEqual(s.ExternalIPs, tt.wantExternal) {
				t.Errorf("externalIPs = %v, want %v", s.ExternalIPs, tt.wantExternal)
			}
			var np int32
			for _, p := range s.Ports {
				if *p.Name == "tls" && p.NodePort != nil {
					np = *p.NodePort
				}
			}
			if np != tt.wantNodePort {
				t.Errorf("tls nodePort = %d, want %d", np, tt.wantNodePort)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func TestExposureValidate(t *testing.T) {
	tests := []struct {
		name    string
		exp     Exposure
		wantErr string
	}{
		{"LoadBalancer", Exposure{}, ""},
		{"NodePort", Exposure{Type: corev1.ServiceTypeNodePort}, ""},
		{"ClusterIP with address", Exposure{Type: corev1.ServiceTypeClusterIP, Address: "192.0.2.1"}, ""},
		{"ClusterIP without address is unreachable", Exposure{Type: corev1.ServiceTypeClusterIP}, "needs a fixed address"},
		{"ExternalName is unsupported", Exposure{Type: corev1.ServiceTypeExternalName}, "unsupported service type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.exp.Validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestControlPlaneIngress(t *testing.T) {
	g := ControlPlaneIngress("istio-system", Exposure{})
	dep := g.Deployment()
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"name", g.Name, "istio-ingressgateway"},
		{"istio label", dep.Spec.Template.Labels["istio"], "ingressgateway"},
		{"no network label", dep.Spec.Template.Labels[NetworkLabel], ""},
		{"no network view env", len(dep.Spec.Template.Spec.Containers[0].Env), 0},
		{"ports", g.Ports, []Port{{"status-port", 15021}, {"tls-xds", 15012}, {"tls-webhook", 15017}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

// servers flattens a Gateway resource's servers to "number/name/protocol/mode/hosts".
func servers(u *unstructured.Unstructured) []string {
	ss, _, _ := unstructured.NestedSlice(u.Object, "spec", "servers")
	var out []string
	for _, s := range ss {
		m := s.(map[string]any)
		port := m["port"].(map[string]any)
		tls := m["tls"].(map[string]any)
		var hosts []string
		for _, h := range m["hosts"].([]any) {
			hosts = append(hosts, h.(string))
		}
		out = append(out, strings.Join([]string{jsonNumber(port["number"]), port["name"].(string), port["protocol"].(string), tls["mode"].(string), strings.Join(hosts, ",")}, "/"))
	}
	return out
}

// routes flattens a VirtualService's TLS routes to "port sni -> host:port".
func routes(u *unstructured.Unstructured) []string {
	rs, _, _ := unstructured.NestedSlice(u.Object, "spec", "tls")
	var out []string
	for _, r := range rs {
		m := r.(map[string]any)
		match := m["match"].([]any)[0].(map[string]any)
		dst := m["route"].([]any)[0].(map[string]any)["destination"].(map[string]any)
		out = append(out, jsonNumber(match["port"])+" "+match["sniHosts"].([]any)[0].(string)+" -> "+dst["host"].(string)+":"+jsonNumber(dst["port"].(map[string]any)["number"]))
	}
	return out
}

func TestIstioResources(t *testing.T) {
	tests := []struct {
		name        string
		u           *unstructured.Unstructured
		wantName    string
		wantServers []string
		wantRoutes  []string
		wantSel     string
	}{
		{
			name: "cross-network gateway", u: CrossNetworkGateway("istio-system"), wantName: "cross-network-gateway",
			wantServers: []string{"15443/tls/TLS/AUTO_PASSTHROUGH/*.local"}, wantSel: "eastwestgateway",
		},
		{
			name: "istiod gateway", u: IstiodGateway("istio-system"), wantName: "istiod-gateway",
			wantServers: []string{"15012/tls-istiod/tls/PASSTHROUGH/*", "15017/tls-istiodwebhook/tls/PASSTHROUGH/*"}, wantSel: "eastwestgateway",
		},
		{
			name: "istiod virtual service", u: IstiodVirtualService("istio-system"), wantName: "istiod-vs",
			wantRoutes: []string{"15012 * -> istiod.istio-system.svc.cluster.local:15012", "15017 * -> istiod.istio-system.svc.cluster.local:443"},
		},
		{
			name: "API server gateway: its own port, passthrough, the API server's name only", u: APIServerGateway("istio-system"), wantName: "kube-apiserver-gateway",
			wantServers: []string{"6443/tls-kube-api/TLS/PASSTHROUGH/kubernetes.default.svc"}, wantSel: "eastwestgateway",
		},
		{
			name: "API server virtual service: SNI kubernetes.default.svc to the kubernetes Service", u: APIServerVirtualService("istio-system"), wantName: "kube-apiserver-vs",
			wantRoutes: []string{"6443 kubernetes.default.svc -> kubernetes.default.svc.cluster.local:443"},
		},
		{
			name: "external istiod gateway", u: ExternalIstiodGateway("external-istiod"), wantName: "external-istiod-gw",
			wantServers: []string{"15012/tls-XDS/tls/PASSTHROUGH/*", "15017/tls-WEBHOOK/tls/PASSTHROUGH/*"}, wantSel: "ingressgateway",
		},
		{
			name: "external istiod virtual service", u: ExternalIstiodVirtualService("external-istiod", "external-istiod"), wantName: "external-istiod-vs",
			wantRoutes: []string{"15012 * -> istiod-external-istiod.external-istiod.svc.cluster.local:15012", "15017 * -> istiod-external-istiod.external-istiod.svc.cluster.local:443"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.u.GetName() != tt.wantName || tt.u.GetAPIVersion() != "networking.istio.io/v1" {
				t.Errorf("%s %s, want networking.istio.io/v1 %s", tt.u.GetAPIVersion(), tt.u.GetName(), tt.wantName)
			}
			if tt.wantServers != nil {
				if got := servers(tt.u); !reflect.DeepEqual(got, tt.wantServers) {
					t.Errorf("servers = %v, want %v", got, tt.wantServers)
				}
				if sel, _, _ := unstructured.NestedString(tt.u.Object, "spec", "selector", "istio"); sel != tt.wantSel {
					t.Errorf("selector istio=%q, want %q", sel, tt.wantSel)
				}
			}
			if tt.wantRoutes != nil {
				if got := routes(tt.u); !reflect.DeepEqual(got, tt.wantRoutes) {
					t.Errorf("routes = %v, want %v", got, tt.wantRoutes)
				}
			}
		})
	}
}

func TestLookupAddress(t *testing.T) {
	svc := func(typ corev1.ServiceType, mutate func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: EastWestName, Namespace: "istio-system"},
			Spec:       corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{{Name: "tls", Port: 15443, NodePort: 31443}}},
		}
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.1.1.1"},
		{Type: corev1.NodeExternalIP, Address: "203.0.113.5"},
	}}}
	tests := []struct {
		name     string
		objs     []any
		wantOK   bool
		wantHost string
		wantTLS  int32
	}{
		{name: "no service yet", wantOK: false},
		{name: "LoadBalancer without ingress", objs: []any{svc(corev1.ServiceTypeLoadBalancer, nil)}, wantOK: false},
		{name: "LoadBalancer ingress IP", objs: []any{svc(corev1.ServiceTypeLoadBalancer, func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "172.18.0.10"}}
		})}, wantOK: true, wantHost: "172.18.0.10", wantTLS: 15443},
		{name: "LoadBalancer ingress hostname", objs: []any{svc(corev1.ServiceTypeLoadBalancer, func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "gw.example.com"}}
		})}, wantOK: true, wantHost: "gw.example.com", wantTLS: 15443},
		{name: "ClusterIP fixed address", objs: []any{svc(corev1.ServiceTypeClusterIP, func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.7"} })}, wantOK: true, wantHost: "192.0.2.7", wantTLS: 15443},
		{name: "ClusterIP without address never has one", objs: []any{svc(corev1.ServiceTypeClusterIP, nil)}, wantOK: false},
		{name: "NodePort uses a node's external IP and node ports", objs: []any{svc(corev1.ServiceTypeNodePort, nil), node}, wantOK: true, wantHost: "203.0.113.5", wantTLS: 31443},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset()
			for _, o := range tt.objs {
				switch o := o.(type) {
				case *corev1.Service:
					_, _ = cs.CoreV1().Services(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
				case *corev1.Node:
					_, _ = cs.CoreV1().Nodes().Create(context.Background(), o, metav1.CreateOptions{})
				}
			}
			c := &kube.Cluster{Name: "east", Kube: cs}
			addr, ok, err := LookupAddress(context.Background(), c, "istio-system", EastWestName)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.wantOK || addr.Host != tt.wantHost || addr.Ports["tls"] != tt.wantTLS {
				t.Errorf("LookupAddress = %+v, %v; want host %q tls %d, %v", addr, ok, tt.wantHost, tt.wantTLS, tt.wantOK)
			}
		})
	}
}

func TestShortDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{2 * time.Minute, "2m"},
		{90 * time.Second, "1m30s"},
		{time.Hour, "1h"},
		{5 * time.Second, "5s"},
	}
	for _, tt := range tests {
		if got := shortDuration(tt.d); got != tt.want {
			t.Errorf("shortDuration(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
