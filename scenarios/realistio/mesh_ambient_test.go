package realistio

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flotillamesh/flotilla/server"
)

// TestAmbientMultiNetworkApply is ambient multi-network as flotilla sets it
// up: a multi-primary spec with dataplaneMode ambient on two networks.
// flotilla apply writes the ambient Istio, IstioCNI and ZTunnel and the
// istio-east-west Gateway (none of it by hand); real istiod deploys the
// gateway and gives the emulator's ztunnels their workload view. flotilla
// check passes, istiod's networkz showing each network's gateway with its
// HBONE port; flotilla verify (ambient sample namespace, global helloworld)
// gets v1 and v2 from each side with no failed request. Negative controls:
// a Gateway stripped of its network label fails check until an apply
// restores it; with
// the Service left local (--local-service) each side gets only its own
// version.
func TestAmbientMultiNetworkApply(t *testing.T) {
	l := ambNetLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// Another test of this lab may have left its sample (by hand).
	removeSampleAndWait(t, l)
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: multi-primary
  dataplaneMode: ambient
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: amb-east, context: amb-east, network: network1, kubeconfig: %[1]s}
  - {name: amb-west, context: amb-west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig)
	h, m := applyDoc(t, ctx, l, doc)
	startEmulatorLogged(t, l)
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
		waitIstiodReady(t, ctx, c)
		waitSailReady(t, ctx, kc, ztunnelGVR, "default")
		t.Logf("%s: east-west Gateway address %s", c.Name, waitGatewayAddress(t, ctx, kc, "istio-system", "istio-eastwestgateway"))
	}
	// istiod finds the other network's gateway once its remote cluster
	// synced and that Gateway has its address.
	for _, c := range l.Clusters() {
		ck := waitCheck(t, ctx, h, "istiod knows every network's gateway", c.Name, true)
		t.Logf("check %s [%s]: %s", ck.Name, ck.Cluster, ck.Message)
	}

	res, err := h.Verify(ctx, m, server.VerifyOptions{Requests: 10, Keep: true})
	t.Cleanup(func() { removeSampleAndWait(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, c := range res.Clients {
		t.Logf("verify %s %s: %d requests, answers %v, %d failed %v", c.Cluster, c.Pod, c.Requests, c.Answers, c.Failures, c.Errors)
	}
	if err := res.Err(); err != nil {
		t.Errorf("verify: %v (diagnosis %+v)", err, res.Diagnosis)
	}

	// With the sample in place, every check passes: the ambient gateways
	// are on their networks, istiod knows their HBONE ports, the shared
	// helloworld is global and istiod has its workloads from both clusters.
	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	ambientChecks := []string{"ambient gateway on its network", "istiod knows every network's gateway", "services in several clusters are global", "istiod has every cluster's endpoints of global services"}
	seen := map[string]int{}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		}
		if slices.Contains(ambientChecks, c.Name) {
			seen[c.Name]++
			t.Logf("check %s [%s]: %s", c.Name, c.Cluster, c.Message)
		}
	}
	for _, name := range ambientChecks {
		if seen[name] == 0 {
			t.Errorf("no check %q ran", name)
		}
	}

	// A negative control: west's Gateway loses its network label, without
	// which the other istiods' ambient registry does not take it for
	// network2's gateway (remoteK8sGatewayToNetworkGateways). check says
	// so; an apply puts it back. (istiod's networkz still lists network2:
	// it reads the Service istiod deployed, whose network label the
	// gateway template falls back to west istiod's own global.network for.)
	west := l.Cluster("amb-west")
	wkc, err := west.Connect()
	if err != nil {
		t.Fatal(err)
	}
	unlabel := []byte(`{"metadata":{"labels":{"topology.istio.io/network":null}}}`)
	if _, err := wkc.Dynamic.Resource(gatewayGVR).Namespace("istio-system").Patch(ctx, "istio-eastwestgateway", types.MergePatchType, unlabel, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	ck := waitCheck(t, ctx, h, "ambient gateway on its network", "amb-west", false)
	t.Logf("without the label: check %s [%s]: %s (hint: %s)", ck.Name, ck.Cluster, ck.Message, ck.Hint)
	if !strings.Contains(ck.Message, `topology.istio.io/network="", want "network2"`) {
		t.Errorf("check %s [%s]: %s, want it to name the missing label", ck.Name, ck.Cluster, ck.Message)
	}
	if rep, err := h.Apply(ctx, m, server.ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("apply: %v %v", err, rep.Err())
	}
	waitCheck(t, ctx, h, "ambient gateway on its network", "amb-west", true)

	// The negative control: a fresh sample with helloworld left local (not
	// the global one relabelled: istiod and the ztunnels would take a
	// moment to drop the other cluster's workloads).
	removeSampleAndWait(t, l)
	local, err := h.Verify(ctx, m, server.VerifyOptions{Requests: 10, Keep: true, LocalService: true})
	if err != nil {
		t.Fatalf("verify --local-service: %v", err)
	}
	want := map[string]string{}
	for i, c := range local.Clients {
		want[c.Cluster] = local.Versions[i]
	}
	for _, c := range local.Clients {
		t.Logf("verify --local-service %s: answers %v, %d failed", c.Cluster, c.Answers, c.Failures)
		if c.Failures != 0 || len(c.Answers) != 1 || c.Answers[want[c.Cluster]] != c.Requests {
			t.Errorf("%s: a local helloworld answered %v with %d failures, want only %s", c.Cluster, c.Answers, c.Failures, want[c.Cluster])
		}
	}
}
