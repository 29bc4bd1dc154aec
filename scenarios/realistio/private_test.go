package realistio

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
)

// privLab runs each cluster's istiods in a network namespace of the
// cluster's own, from which the other cluster's API server is not
// reachable (lab.Options.PrivateAPIServers): only its own API server and
// the load-balancer addresses (east-west gateways) are.
var privLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, RealIstio: true, PrivateAPIServers: true})

// TestPrivateAPIServers: with API servers the other cluster's istiod cannot
// reach, a mesh read directly (the negative control) applies, but istiod
// never syncs the other cluster and check fails naming that link and its
// direct path; the same mesh with apiServerAccess: gateway syncs both
// clusters through the gateways, passes check and answers helloworld both
// ways.
func TestPrivateAPIServers(t *testing.T) {
	l := privLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	startEmulator(t, l)
	doc := func(access string) string {
		return fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s, apiServerAccess: %[2]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s, apiServerAccess: %[2]s}
`, l.Kubeconfig, access)
	}

	// Direct: the hub reaches both API servers and writes the secrets; the
	// istiods cannot use them.
	h := labHub(t, ctx, l)
	m := applyUntilClean(t, ctx, h, doc("direct"))
	for _, tc := range []struct{ cluster, other string }{{"east", "west"}, {"west", "east"}} {
		in := waitIstiodReady(t, ctx, l.Cluster(tc.cluster))
		status := clusterzStatus(t, ctx, in, tc.other, func(s string) bool { return s != "" && s != "synced" && s != "syncing" })
		t.Logf("%s: direct: clusterz says %s is %s (istiod log %s)", tc.cluster, tc.other, status, in.Log)
		if status == "synced" {
			t.Fatalf("%s: istiod synced %s directly: the lab did not refuse direct access", tc.cluster, tc.other)
		}
	}
	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	named := 0
	for _, c := range checks {
		if c.Name != "istiod sees remote clusters" {
			continue
		}
		other := map[string]string{"east": "west", "west": "east"}[c.Cluster]
		want := fmt.Sprintf("cluster %s is ", other)
		direct := "(read direct " + l.Cluster(other).Server + ")"
		t.Logf("direct: check %s [%s]: ok %v: %s (hint: %s)", c.Name, c.Cluster, c.OK, c.Message, c.Hint)
		if c.OK || !strings.Contains(c.Message, want) || !strings.Contains(c.Message, direct) || !strings.Contains(c.Hint, "apiServerAccess: gateway") {
			t.Errorf("direct: check %s [%s]: ok %v %q, want a failure containing %q and %q, hinting apiServerAccess: gateway", c.Name, c.Cluster, c.OK, c.Message, want, direct)
			continue
		}
		named++
	}
	if named != 2 {
		t.Errorf("direct: %d failed istiod checks naming the unreachable link, want 2", named)
	}

	// Gateway: the same clusters, read through each other's gateway.
	m = applyUntilClean(t, ctx, h, doc("gateway"))
	for _, tc := range []struct{ cluster, other string }{{"east", "west"}, {"west", "east"}} {
		in := waitIstiodReady(t, ctx, l.Cluster(tc.cluster))
		if status := clusterzStatus(t, ctx, in, tc.other, func(s string) bool { return s == "synced" }); status != "synced" {
			t.Fatalf("%s: gateway: clusterz says %s is %q (istiod log %s)", tc.cluster, tc.other, status, in.Log)
		}
		t.Logf("%s: gateway: clusterz says %s is synced", tc.cluster, tc.other)
	}
	checks, err = h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("gateway: check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		}
		if c.Name == "API server path" || c.Name == "istiod sees remote clusters" {
			t.Logf("gateway: check %s [%s]: %s", c.Name, c.Cluster, c.Message)
		}
	}
	res, err := h.Verify(ctx, m, server.VerifyOptions{})
	t.Cleanup(func() { removeSample(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, c := range res.Clients {
		t.Logf("%s %s: %d requests, answers %v, %d failed %v", c.Cluster, c.Pod, c.Requests, c.Answers, c.Failures, c.Errors)
	}
	if err := res.Err(); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// clusterzStatus polls istiod's clusterz (up to three minutes) until the
// sync status of cluster id satisfies done, and returns the last seen.
func clusterzStatus(t *testing.T, ctx context.Context, in lab.IstiodInfo, id string, done func(string) bool) string {
	t.Helper()
	last := ""
	_ = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		var clusters []struct {
			ID         string `json:"id"`
			SyncStatus string `json:"syncStatus"`
		}
		if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
			return false, nil
		}
		for _, c := range clusters {
			if c.ID == id {
				last = c.SyncStatus
			}
		}
		return done(last), nil
	})
	return last
}
