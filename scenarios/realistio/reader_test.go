package realistio

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server"
)

// TestReaderLacksPermission is the negative control of the reader's rules:
// when west's reader may not list endpointslices, the istiod in east that
// reads west through it never syncs west (its clusterz says so), and
// flotilla check names both the unsynced cluster and the missing
// permission. The next apply restores the rule and istiod syncs.
func TestReaderLacksPermission(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	east, west := l.Cluster("east"), l.Cluster("west")
	wkc, err := west.Connect()
	if err != nil {
		t.Fatal(err)
	}
	ekc, err := east.Connect()
	if err != nil {
		t.Fatal(err)
	}

	// Someone trims west's reader role.
	name := federation.ReaderClusterRoleName("istio-system")
	role, err := wkc.Kube.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var kept []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if !slices.Contains(r.Resources, "endpointslices") {
			kept = append(kept, r)
		}
	}
	role.Rules = kept
	if _, err := wkc.Kube.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{FieldManager: "someone"}); err != nil {
		t.Fatal(err)
	}
	// istiod in east reads west afresh.
	restartIstiod(t, ctx, ekc, east, waitIstiodReady(t, ctx, east))

	sync := waitCheck(t, ctx, h, "istiod sees remote clusters", "east", false)
	if !strings.Contains(sync.Message, "cluster west is") {
		t.Errorf("check %q does not name west as unsynced", sync.Message)
	}
	t.Logf("istiod's view: %s", sync.Message)
	auth := waitCheck(t, ctx, h, "remote secrets authenticate", "east", false)
	for _, want := range []string{"istio-remote-secret-west", "list endpointslices.discovery.k8s.io", "watch endpointslices.discovery.k8s.io"} {
		if !strings.Contains(auth.Message, want) {
			t.Errorf("check message %q does not name %q", auth.Message, want)
		}
	}
	t.Logf("the reader's permissions: %s", auth.Message)

	// The next apply puts the rule back; istiod syncs west again.
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	restartIstiod(t, ctx, ekc, east, waitIstiodReady(t, ctx, east))
	waitCheck(t, ctx, h, "remote secrets authenticate", "east", true)
	waitCheck(t, ctx, h, "istiod sees remote clusters", "east", true)
}
