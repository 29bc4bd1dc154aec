package realistio

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server"
)

// TestAmbientMultiNetworkApply is ambient multi-network as flotilla sets it
// up: a multi-primary spec with dataplaneMode ambient on two networks.
// flotilla apply writes the ambient Istio, IstioCNI and ZTunnel and the
// istio-east-west Gateway (none of it by hand); real istiod deploys the
// gateway and gives the emulator's ztunnels their workload view. flotilla
// check passes, istiod's networkz showing each network's gateway with its
// HBONE port; flotilla verify (ambient sample namespace, global helloworld)
// gets v1 and v2 from each side with no failed request; with the Service
// left local (--local-service) each side gets only its own version.
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

	// The negative control: the same sample with helloworld left local.
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
