package gateways

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewShared("east", "west", "north")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

func connect(t *testing.T) *kube.Cluster {
	t.Helper()
	c, err := testLab.Get(t).Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyGateway writes g's namespace and objects.
func applyGateway(ctx context.Context, t *testing.T, c *kube.Cluster, g Gateway) {
	t.Helper()
	ns, err := deploy.NamespaceObject(g.Namespace, g.Network, nil)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := g.Objects()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range append([]kube.Object{ns}, objs...) {
		if _, err := o.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLabWaitForAddress(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	tests := []struct {
		name      string
		namespace string
		exp       Exposure
		timeout   time.Duration
		wantHost  func(*corev1.Service) string
		wantErr   string
	}{
		{
			name: "LoadBalancer gets the allocator's address", namespace: "gw-lb", timeout: time.Minute,
			wantHost: func(s *corev1.Service) string {
				if len(s.Status.LoadBalancer.Ingress) == 0 {
					return "<none>"
				}
				return s.Status.LoadBalancer.Ingress[0].IP
			},
		},
		{
			name: "fixed address needs no load balancer", namespace: "gw-fixed", timeout: time.Minute,
			exp:      Exposure{Type: corev1.ServiceTypeClusterIP, Address: "192.0.2.44"},
			wantHost: func(*corev1.Service) string { return "192.0.2.44" },
		},
		{
			name: "ClusterIP without address times out naming the service", namespace: "gw-none", timeout: 3 * time.Second,
			exp:     Exposure{Type: corev1.ServiceTypeClusterIP},
			wantErr: "east: service gw-none/istio-eastwestgateway got no external address within 3s",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := EastWest(tt.namespace, "n1", tt.exp)
			applyGateway(ctx, t, c, g)
			var lines []string
			addr, err := WaitForAddress(ctx, c, g.Namespace, g.Name, tt.timeout, func(s string) { lines = append(lines, s) })
			if len(lines) == 0 || !strings.HasPrefix(lines[0], "east: service "+tt.namespace+"/istio-eastwestgateway: waiting") {
				t.Errorf("progress = %q, want a first line announcing the wait", lines)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("WaitForAddress() = %v, %v; want error starting %q", addr, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			svc, err := c.Kube.CoreV1().Services(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.wantHost(svc); addr.Host != want {
				t.Errorf("address %q, want %q", addr.Host, want)
			}
			if addr.Ports["tls"] != PortTLS || addr.Ports["tls-istiod"] != PortIstiod {
				t.Errorf("ports %v", addr.Ports)
			}
		})
	}
}

func TestLabWaitForMissingService(t *testing.T) {
	c := connect(t)
	_, err := WaitForAddress(context.Background(), c, "gw-missing", EastWestName, 2*time.Second, nil)
	want := "east: service gw-missing/istio-eastwestgateway got no external address within 2s (the service does not exist)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestLabGatewayApplyIdempotent(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	g := EastWest("gw-idem", "n1", Exposure{})
	applyGateway(ctx, t, c, g)
	objs, err := g.Objects()
	if err != nil {
		t.Fatal(err)
	}
	// The allocator writes the Service status once; wait for it so that the
	// comparison below sees only flotilla's writes.
	if _, err := WaitForAddress(ctx, c, g.Namespace, g.Name, time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	// Controllers keep writing the Deployment's status (its pods come up
	// meanwhile), so what must not move is flotilla's own managedFields
	// entry: a no-op apply leaves its fields and its time alone.
	first := map[string]string{}
	for _, o := range objs {
		got, err := o.Apply(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		first[o.Ref()] = owned(got)
	}
	for _, o := range objs {
		got, err := o.Apply(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if now := owned(got); now != first[o.Ref()] || now == "" {
			t.Errorf("%s: flotilla's managed fields changed on a second apply:\n%s\n%s", o.Ref(), first[o.Ref()], now)
		}
	}
	for _, o := range []kube.Object{kube.Custom(CrossNetworkGateway(g.Namespace)), kube.Custom(IstiodGateway(g.Namespace)), kube.Custom(IstiodVirtualService(g.Namespace)),
		kube.Custom(APIServerGateway(g.Namespace)), kube.Custom(APIServerVirtualService(g.Namespace))} {
		a, err := o.Apply(ctx, c)
		if err != nil {
			t.Fatalf("%s rejected by the Istio CRD schema: %v", o.Ref(), err)
		}
		b, err := o.Apply(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if a.GetResourceVersion() != b.GetResourceVersion() {
			t.Errorf("%s: resourceVersion %s -> %s on a second apply", o.Ref(), a.GetResourceVersion(), b.GetResourceVersion())
		}
	}
}

// owned is flotilla's server-side apply entry in obj's managedFields.
func owned(obj metav1.Object) string {
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager == kube.FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply && mf.Subresource == "" {
			data, _ := json.Marshal(mf)
			return string(data)
		}
	}
	return ""
}
