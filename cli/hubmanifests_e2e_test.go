package cli_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// TestHubManifestsInLab applies the replicated hub's manifests (deploy.
// HubObjects) to a lab cluster: the API server admits them, the
// StatefulSet controller makes one pod per replica with the arguments
// HubArgs gives, the gossip Service is headless, and every flag those
// arguments use is one `flotilla server` takes.
func TestHubManifestsInLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kc, err := l.Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("flotilla-hub-%d", time.Now().Unix()%100000)
	o := deploy.HubOptions{Namespace: ns, Image: "flotilla:test", EtcdEndpoints: []string{"etcd-0.etcd:2379", "etcd-1.etcd:2379", "etcd-2.etcd:2379"}, EtcdTLS: true}
	objs, err := deploy.HubObjects(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.EnsureNamespace(ctx, kc, ns, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kc.Kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := deploy.ApplyObjects(ctx, kc, objs, nil); err != nil {
		t.Fatal(err)
	}

	svc, err := kc.Kube.CoreV1().Services(ns).Get(ctx, deploy.HubGossipService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "None" {
		t.Errorf("gossip Service %s/%s: clusterIP %q, want headless", ns, svc.Name, svc.Spec.ClusterIP)
	}
	want := deploy.HubArgs(o, ns, 3)
	for i := range 3 {
		name := fmt.Sprintf("%s-%d", deploy.HubName, i)
		var args []string
		for {
			p, err := kc.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				args = p.Spec.Containers[0].Args
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("no pod %s/%s from the StatefulSet: %v", ns, name, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
		if !slices.Equal(args, want) {
			t.Errorf("pod %s args %v, want %v", name, args, want)
		}
	}

	help, stderr, code := newEnv(t).run(t, "server", "--help")
	if code != 0 {
		t.Fatalf("flotilla server --help: %s", stderr)
	}
	for _, a := range want {
		flag, _, _ := strings.Cut(a, "=")
		if !strings.Contains(help, flag+" ") {
			t.Errorf("manifest argument %s: flotilla server has no flag %s", a, flag)
		}
	}
}
