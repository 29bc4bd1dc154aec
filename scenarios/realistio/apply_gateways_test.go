package realistio

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/server"
)

// TestApplyInjectsGateways: flotilla writes the east-west gateway before
// the Istio resource (its address goes into the control planes), so on a
// fresh install its first pods are admitted before the revision's
// injection webhook exists. When apply returns, every pod of the gateway's
// current template must have been injected by the real webhook of revision
// default (its status annotation names the revision, the placeholder image
// auto is gone), with no test-side recreation: apply restarted the
// Deployment, as an update of flotilla-gateways that its own applies leave
// alone. A second apply restarts nothing. (This file sorts first, so in a
// full run its apply is the lab's first.)
func TestApplyInjectsGateways(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	generations := map[string]int64{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		dep, err := kc.Kube.AppsV1().Deployments("istio-system").Get(ctx, gateways.EastWestName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: gateway deployment: %v", c.Name, err)
		}
		generations[c.Name] = dep.Generation
		if dep.Spec.Template.Annotations[gateways.RestartedAtAnnotation] == "" {
			t.Errorf("%s: deployment istio-system/%s was never restarted, though written before revision default's webhook", c.Name, dep.Name)
		}
		for _, mf := range dep.ManagedFields {
			owns := mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), gateways.RestartedAtAnnotation)
			if owns && (mf.Manager != kube.ManagerGateways || mf.Operation != metav1.ManagedFieldsOperationUpdate) {
				t.Errorf("%s: %s owned by %s (%s), want %s's update only", c.Name, gateways.RestartedAtAnnotation, mf.Manager, mf.Operation, kube.ManagerGateways)
			}
		}
		checkGatewayPodsInjected(t, ctx, kc, dep)
	}

	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		dep, err := kc.Kube.AppsV1().Deployments("istio-system").Get(ctx, gateways.EastWestName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if dep.Generation != generations[c.Name] {
			t.Errorf("%s: second apply moved the gateway deployment from generation %d to %d", c.Name, generations[c.Name], dep.Generation)
		}
	}
}

// checkGatewayPodsInjected checks the pods of dep's newest ReplicaSet:
// injected by revision default, proxy image filled in.
func checkGatewayPodsInjected(t *testing.T, ctx context.Context, kc *kube.Cluster, dep *appsv1.Deployment) {
	t.Helper()
	rsList, err := kc.Kube.AppsV1().ReplicaSets(dep.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "istio=eastwestgateway"})
	if err != nil {
		t.Fatal(err)
	}
	var newest types.UID
	rank := -1
	for _, rs := range rsList.Items {
		if n, _ := strconv.Atoi(rs.Annotations["deployment.kubernetes.io/revision"]); n > rank {
			newest, rank = rs.UID, n
		}
	}
	pods, err := kc.Kube.CoreV1().Pods(dep.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "istio=eastwestgateway"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || len(p.OwnerReferences) == 0 || p.OwnerReferences[0].UID != newest {
			continue
		}
		n++
		var status struct {
			Revision string `json:"revision"`
		}
		raw := p.Annotations[gateways.SidecarStatusAnnotation]
		if err := json.Unmarshal([]byte(raw), &status); err != nil || status.Revision != "default" {
			t.Errorf("%s: gateway pod %s/%s: %s %q, want the injection status of revision default", kc.Name, p.Namespace, p.Name, gateways.SidecarStatusAnnotation, raw)
		}
		if img := proxyImage(&p); img == "" || img == "auto" {
			t.Errorf("%s: gateway pod %s/%s: istio-proxy image %q, want the injector's", kc.Name, p.Namespace, p.Name, img)
		}
		t.Logf("%s: gateway pod %s/%s injected: %s", kc.Name, p.Namespace, p.Name, raw)
	}
	if n == 0 {
		t.Errorf("%s: no pod of the gateway's current ReplicaSet", kc.Name)
	}
}

// proxyImage is the image of the pod's istio-proxy container, "" if none.
func proxyImage(p *corev1.Pod) string {
	for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
		if c.Name == "istio-proxy" {
			return c.Image
		}
	}
	return ""
}
