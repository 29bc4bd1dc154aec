package lab_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewShared("east", "west")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

// TestSmoke asserts, in both clusters, what every later test relies on.
func TestSmoke(t *testing.T) {
	l := testLab.Get(t)
	for _, c := range l.Clusters() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cs := c.Client()
			ns := "smoke"

			t.Run("namespace and service account are created", func(t *testing.T) {
				if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			})

			t.Run("TokenRequest token passes TokenReview as its service account", func(t *testing.T) {
				tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reader", &authnv1.TokenRequest{
					Spec: authnv1.TokenRequestSpec{Audiences: []string{"istio-ca"}},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				rev, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
					Spec: authnv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"istio-ca"}},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if want := "system:serviceaccount:smoke:reader"; !rev.Status.Authenticated || rev.Status.User.Username != want {
					t.Fatalf("TokenReview: authenticated=%v user=%q, want %q (error %q)", rev.Status.Authenticated, rev.Status.User.Username, want, rev.Status.Error)
				}
				rev, err = cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
					Spec: authnv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"other"}},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if rev.Status.Authenticated {
					t.Fatal("a token for audience istio-ca passed TokenReview for audience other")
				}
			})

			t.Run("deployment pods run with IPs from the cluster's range and an EndpointSlice lists them", func(t *testing.T) {
				deployAndExpose(ctx, t, cs, ns, c.PodCIDR)
			})

			t.Run("LoadBalancer service gets an ingress IP from the cluster's pool", func(t *testing.T) {
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: "lb"},
					Spec: corev1.ServiceSpec{
						Type:     corev1.ServiceTypeLoadBalancer,
						Selector: map[string]string{"app": "web"},
						Ports:    []corev1.ServicePort{{Name: "tls", Port: 15443, TargetPort: intstr.FromInt(15443)}},
					},
				}
				if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				var ip string
				err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
					s, err := cs.CoreV1().Services(ns).Get(ctx, "lb", metav1.GetOptions{})
					if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
						return false, nil
					}
					ip = s.Status.LoadBalancer.Ingress[0].IP
					return true, nil
				})
				if err != nil {
					t.Fatalf("no ingress IP: %v", err)
				}
				_, pool, _ := net.ParseCIDR(c.LoadBalancerCIDR)
				if !pool.Contains(net.ParseIP(ip)) {
					t.Fatalf("ingress IP %s is not in the cluster's pool %s", ip, c.LoadBalancerCIDR)
				}
			})

			t.Run("Sail Istio resource is checked by the CRD schema", func(t *testing.T) {
				kc, err := c.Connect()
				if err != nil {
					t.Fatal(err)
				}
				bad := sailIstio("bad", map[string]any{"version": 42})
				gvr := schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
				_, err = kc.Dynamic.Resource(gvr).Create(ctx, bad, metav1.CreateOptions{})
				if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.version") {
					t.Fatalf("Istio with spec.version 42 (an integer): got %v, want Invalid naming spec.version", err)
				}
				good := sailIstio("default", map[string]any{"version": "v1.27.0", "namespace": "istio-system",
					"values": map[string]any{"global": map[string]any{"meshID": "mesh1", "network": "network1"}}})
				if _, err := kc.Apply(ctx, good); err != nil {
					t.Fatalf("valid Istio rejected: %v", err)
				}
			})
		})
	}
}

// TestIsolation asserts that an object made in one cluster is absent in the other.
func TestIsolation(t *testing.T) {
	l := testLab.Get(t)
	ctx := context.Background()
	east, west := l.Cluster("east").Client(), l.Cluster("west").Client()
	if _, err := east.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "only-in-east"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := east.CoreV1().ConfigMaps("default").Get(ctx, "only-in-east", metav1.GetOptions{}); err != nil {
		t.Fatalf("east lost its own configmap: %v", err)
	}
	if _, err := west.CoreV1().ConfigMaps("default").Get(ctx, "only-in-east", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("west: got %v, want NotFound", err)
	}
	if l.Cluster("east").Server == l.Cluster("west").Server {
		t.Fatal("east and west share an API server")
	}
	if l.Cluster("east").PodCIDR == l.Cluster("west").PodCIDR {
		t.Fatal("east and west share a pod range")
	}
}

func deployAndExpose(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, podCIDR string) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "example/web", Ports: []corev1.ContainerPort{{ContainerPort: 5000}},
				}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 5000}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, cidr, _ := net.ParseCIDR(podCIDR)
	var ips []string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(pods.Items) != 2 {
			return false, nil
		}
		ips = ips[:0]
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				return false, nil
			}
			ips = append(ips, p.Status.PodIP)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pods not Running with IPs: %v", err)
	}
	for _, ip := range ips {
		if !cidr.Contains(net.ParseIP(ip)) {
			t.Fatalf("pod IP %s is not in the cluster's pod range %s", ip, podCIDR)
		}
	}
	// Running is not Ready: no data plane has said the pod's is in place.
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				t.Errorf("pod %s Ready before its data plane: %+v", p.Name, c)
			}
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, lab.DataPlaneAnnotation, lab.DataPlaneReady)
		if _, err := cs.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return false, nil
		}
		got := map[string]bool{}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					for _, a := range e.Addresses {
						got[a] = true
					}
				}
			}
		}
		for _, ip := range ips {
			if !got[ip] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("EndpointSlice for service web does not list ready pods %v: %v", ips, err)
	}
}

func sailIstio(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sailoperator.io/v1",
		"kind":       "Istio",
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
}
