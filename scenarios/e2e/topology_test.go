package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/pki"
)

const requests = 8

// wantAll asserts that every client got an answer from every version.
func wantAll(t *testing.T, r *verifyResult, code int, clusters ...string) {
	t.Helper()
	if code != 0 || !r.OK {
		t.Fatalf("verify failed (exit %d): %+v, diagnosis %+v", code, r.Clients, r.Diagnosis)
	}
	for _, c := range clusters {
		a := r.answers(c)
		for _, v := range r.Versions {
			if a[v] == 0 {
				t.Errorf("client %s: no answer from %s: %v", c, v, a)
			}
		}
	}
}

// TestMultiPrimaryMultiNetwork: each primary on its own network; calls cross
// through the other network's east-west gateway.
func TestMultiPrimaryMultiNetwork(t *testing.T) {
	s := startShared(t)
	s.apply("multi-primary", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2}")
	r, code := s.verify(requests)
	wantAll(t, r, code, "east", "west")
}

// TestMultiPrimarySingleNetwork: one network; calls reach the other
// cluster's pods directly: each curl proxy holds, from its istiod, the
// other cluster's helloworld pod at its own address, and no gateway.
func TestMultiPrimarySingleNetwork(t *testing.T) {
	s := startReal(t, false, "east", "west")
	s.apply("multi-primary", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network1}")
	r, code := s.verify(requests, "--keep")
	wantAll(t, r, code, "east", "west")

	hello := map[string]string{} // cluster: its helloworld pod's address
	for _, c := range s.lab.Clusters() {
		pods, err := c.Client().CoreV1().Pods("sample").List(context.Background(), metav1.ListOptions{LabelSelector: "app=helloworld"})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("%s: helloworld pods: %v (%d)", c.Name, err, len(pods.Items))
		}
		hello[c.Name] = net.JoinHostPort(pods.Items[0].Status.PodIP, "5000")
	}
	for _, px := range s.em.Proxies() {
		if px.Namespace != "sample" || px.Pod != r.pod(px.Cluster) {
			continue
		}
		other := map[string]string{"east": "west", "west": "east"}[px.Cluster]
		eps := px.Endpoints[helloCluster]
		t.Logf("%s: curl proxy %s: helloworld endpoints from istiod %v", px.Cluster, px.Pod, eps)
		if !slices.Contains(eps, hello[other]) || !slices.Contains(eps, hello[px.Cluster]) || len(eps) != 2 {
			t.Errorf("%s: curl proxy's helloworld endpoints %v, want its own pod %s and %s's pod %s, direct", px.Cluster, eps, hello[px.Cluster], other, hello[other])
		}
	}
}

// helloCluster is the outbound cluster istiod sends for the sample service.
const helloCluster = "outbound|5000||helloworld.sample.svc.cluster.local"

// primaryRemote is the mesh of remoteLab: east the primary, west its
// remote on another network.
var primaryRemote = []string{"{name: east, context: east, network: network1}", "{name: west, context: west, network: network2, role: remote}"}

// TestPrimaryRemoteMultiNetwork: west runs no istiod; its pods are injected
// by east's istiod through east's east-west gateway (15017), and their
// proxies get config and certificates from it the same way (15012).
func TestPrimaryRemoteMultiNetwork(t *testing.T) {
	s := startSharedLab(t, remoteLab)
	s.apply("primary-remote", primaryRemote...)
	if got := s.lab.Cluster("west").Istiods(); len(got) != 0 {
		t.Errorf("remote west runs istiods %+v, want none", got)
	}
	r, code := s.verify(requests)
	wantAll(t, r, code, "east", "west")
}

// TestCertManagerPKI: cert-manager issues the intermediates (flotilla
// projects them into cacerts); cross-cluster mTLS works as with the builtin CA.
func TestCertManagerPKI(t *testing.T) {
	s := startReal(t, true, "east", "west")
	s.pki = "{mode: cert-manager, keyAlgorithm: ECDSA-P256}"
	s.apply("multi-primary", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2}")
	r, code := s.verify(requests)
	wantAll(t, r, code, "east", "west")
}

// multiNetwork is the mesh of realLab: each cluster its own network.
var multiNetwork = []string{"{name: east, context: east, network: network1}", "{name: west, context: west, network: network2}"}

// Negative controls: each must fail, and for the reason named. Those on
// realLab put back what they broke when they end.
func TestNegativeControls(t *testing.T) {
	t.Run("DifferentRoots", func(t *testing.T) {
		s := startShared(t)
		s.apply("multi-primary", multiNetwork...)
		ctx := context.Background()
		west := s.lab.Cluster("west").Client()
		orig, err := west.CoreV1().Secrets("istio-system").Get(ctx, pki.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			sec, err := west.CoreV1().Secrets("istio-system").Get(ctx, pki.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			sec.Data = orig.Data
			if _, err := west.CoreV1().Secrets("istio-system").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			s.restartIstiod("west")
		})
		// West's istiod now signs under a root of another mesh.
		root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		in, err := root.IssueIntermediate("west", "istio-system", pki.Config{KeyAlgorithm: pki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.NewCACerts(in, root, nil)
		if err != nil {
			t.Fatal(err)
		}
		sec := orig.DeepCopy()
		sec.Data = cc.SecretData()
		if _, err := west.CoreV1().Secrets("istio-system").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// istiod's cacerts watcher refuses a root that neither holds nor is
		// held by its own ("Updating new ROOT-CA not supported") and keeps
		// signing under the old one: the new root takes effect when istiod
		// restarts.
		s.restartIstiod("west")
		r, code := s.verify(requests)
		if code == 0 || r.OK {
			t.Fatalf("verify passed across two roots: %+v", r.Clients)
		}
		for _, c := range []string{"east", "west"} {
			a := r.answers(c)
			other := map[string]string{"east": "v2", "west": "v1"}[c]
			if a[other] != 0 {
				t.Errorf("client %s got %d answers from %s across roots", c, a[other], other)
			}
			if f := r.lastFailure(c); !strings.Contains(f, "TLS") && !strings.Contains(f, "certificate") {
				t.Errorf("client %s: failure %q is not a TLS failure", c, f)
			}
		}
		if !r.diagnosed("same root everywhere", "") {
			t.Errorf("diagnosis lacks the root check: %+v", r.Diagnosis)
		}
	})

	t.Run("MissingRemoteSecret", func(t *testing.T) {
		s := startShared(t)
		s.apply("multi-primary", multiNetwork...)
		t.Cleanup(func() { s.apply("multi-primary", multiNetwork...) })
		east := s.lab.Cluster("east").Client()
		if err := east.CoreV1().Secrets("istio-system").Delete(context.Background(), "istio-remote-secret-west", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitClusterGone("east", "west")
		r, code := s.verify(requests)
		if code == 0 {
			t.Fatal("verify passed without east's remote secret for west")
		}
		if a := r.answers("east"); a["v1"] == 0 || a["v2"] != 0 {
			t.Errorf("east answers %v: want only v1 (east's istiod cannot read west)", a)
		}
		if a := r.answers("west"); a["v1"] == 0 || a["v2"] == 0 {
			t.Errorf("west answers %v: want v1 and v2 (west still reads east)", a)
		}
		if !r.diagnosed("remote secrets authenticate", "east") {
			t.Errorf("diagnosis lacks east's remote secret: %+v", r.Diagnosis)
		}
	})

	t.Run("GatewayWithoutAddress", func(t *testing.T) {
		s := startShared(t)
		s.apply("multi-primary", multiNetwork...)
		t.Cleanup(func() { s.apply("multi-primary", multiNetwork...) })
		// West's gateway loses its load balancer: a ClusterIP has no address.
		west := s.lab.Cluster("west").Client()
		patch := []byte(`{"spec":{"type":"ClusterIP","externalTrafficPolicy":null}}`)
		ctx := context.Background()
		if _, err := west.CoreV1().Services("istio-system").Patch(ctx, "istio-eastwestgateway", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := west.CoreV1().Services("istio-system").Patch(ctx, "istio-eastwestgateway", types.MergePatchType, []byte(`{"status":{"loadBalancer":null}}`), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
		// istiod keeps the gateway it knew: it reads a Service's gateways
		// only while the Service has an external address (onServiceEvent
		// in istiod's Kubernetes registry), so east's proxies still send
		// v2's calls to the address west's gateway had, and are refused
		// there; the model dropped them at once.
		s.logNetworks("east", "network2")
		r, code := s.verify(requests)
		if code == 0 {
			t.Fatal("verify passed with west's gateway unreachable")
		}
		if a := r.answers("east"); a["v1"] == 0 || a["v2"] != 0 {
			t.Errorf("east answers %v: want only v1 (west's network has no gateway address)", a)
		}
		if !r.diagnosed("gateway address", "west") {
			t.Errorf("diagnosis lacks west's gateway address: %+v", r.Diagnosis)
		}
	})

	// The injection label reaches the namespace only after its pods were
	// admitted: istiod's webhook decides at admission, so they run
	// without a sidecar until they are recreated, and verify (which puts
	// the label back) names them.
	t.Run("NamespaceWithoutInjectionLabel", func(t *testing.T) {
		s := startShared(t)
		s.apply("multi-primary", multiNetwork...)
		r, code := s.verify(requests, "--keep")
		t.Cleanup(s.removeSample)
		wantAll(t, r, code, "east", "west")
		ctx := context.Background()
		east := s.lab.Cluster("east").Client()
		if _, err := east.CoreV1().Namespaces().Patch(ctx, "sample", types.MergePatchType, []byte(`{"metadata":{"labels":{"istio-injection":null}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		old, err := east.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		gone := map[string]bool{}
		for _, p := range old.Items {
			gone[p.Name] = true
			if err := east.CoreV1().Pods("sample").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// Their replacements, admitted while the namespace has no label.
		var bare []string
		err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			pods, err := east.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			bare = nil
			for _, p := range pods.Items {
				if gone[p.Name] {
					return false, nil
				}
				if p.Annotations["sidecar.istio.io/status"] != "" || len(p.Spec.InitContainers) > 0 || len(p.Spec.Containers) != 1 {
					t.Fatalf("east: pod sample/%s was injected in a namespace without the injection label: %v", p.Name, p.Annotations)
				}
				bare = append(bare, p.Name)
			}
			return len(bare) == len(old.Items), nil
		})
		if err != nil {
			t.Fatalf("east: replacement sample pods: %v (have %v)", err, bare)
		}
		r, code = s.verify(requests)
		if code == 0 || r.OK {
			t.Fatalf("verify passed with east's sample pods un-injected: %+v", r.Clients)
		}
		if a := r.answers("east"); a["v1"] == 0 || a["v2"] != 0 {
			t.Errorf("east answers %v: want only v1 (a client without a sidecar reaches the local pod through kube-proxy)", a)
		}
		// Across networks istiod sends only endpoints that take mTLS: the
		// gateway routes by the SNI of Istio's mTLS.
		if a := r.answers("west"); a["v2"] == 0 || a["v1"] != 0 {
			t.Errorf("west answers %v: want only v2 (east's helloworld has no sidecar to take mTLS through the gateway)", a)
		}
		var msg string
		for _, d := range r.Diagnosis {
			if d.Name == "sidecar injected" {
				if d.Cluster != "east" {
					t.Errorf("diagnosis names un-injected pods in %s: %s", d.Cluster, d.Message)
				}
				msg = d.Message
			}
		}
		for _, p := range bare {
			if !strings.Contains(msg, p) {
				t.Errorf("diagnosis %q does not name east's un-injected pod %s: %+v", msg, p, r.Diagnosis)
			}
		}
	})

	t.Run("RemoteWithWrongPilotAddress", func(t *testing.T) {
		s := startSharedLab(t, remoteLab)
		s.apply("primary-remote", primaryRemote...)
		wantWrongPilotRefused(t, s, "west", "default", "istio-system", "istiod")
	})
}

// wantWrongPilotRefused points cluster's remote Istio resource (name) at a
// lab address where no istiod listens, as a remotePilotAddress of a wrong
// gateway would, and checks that verify fails the way real Istio fails:
// the remote chart's Service svcNS/svc (the injection webhook's and the
// proxies' discovery address) now ends there, so the sample's pods in that
// cluster are refused at admission, or, admitted through a connection to
// the injector the API server still held, have proxies that reach no
// istiod; verify names that cluster's pods and why, and check names the
// address against the serving gateway's. Pods already running keep their
// proxies' connections (istio-agent reconnects only when they break).
// flotilla apply, as check's hint says, puts the resource back when the
// test ends.
func wantWrongPilotRefused(t *testing.T, s *scenario, cluster, name, svcNS, svc string) {
	t.Helper()
	ctx := context.Background()
	kc, err := s.lab.Cluster(cluster).Connect()
	if err != nil {
		t.Fatal(err)
	}
	u, err := kc.Dynamic.Resource(istioGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	right, _, _ := unstructured.NestedString(u.Object, "spec", "values", "global", "remotePilotAddress")
	ip := net.ParseIP(right).To4()
	if ip == nil {
		t.Fatalf("%s: Istio %s: remotePilotAddress %q is not an IPv4 address", cluster, name, right)
	}
	// The same gateway pool, an address no Service holds.
	wrong := net.IPv4(ip[0], ip[1], ip[2], 250).String()
	// check's hint: apply puts flotilla's value back.
	t.Cleanup(func() {
		s.run("apply", "-f", s.mesh)
		waitIstiodEndpoint(t, s, cluster, svcNS, svc, right)
		s.waitIstio()
	})
	patch := fmt.Appendf(nil, `{"spec":{"values":{"global":{"remotePilotAddress":%q}}}}`, wrong)
	if _, err := kc.Dynamic.Resource(istioGVR).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIstiodEndpoint(t, s, cluster, svcNS, svc, wrong)

	out, errs, code := s.exec("verify", "--requests", fmt.Sprint(requests), "--timeout", "45s")
	t.Logf("verify: exit %d\n%s\n%s", code, out, errs)
	if code == 0 {
		t.Fatalf("verify passed with %s's remotePilotAddress at %s, where no istiod listens", cluster, wrong)
	}
	if !strings.Contains(errs, cluster+": sample pods not Ready in time") {
		t.Errorf("verify's error does not name %s's sample pods:\n%s", cluster, errs)
	}
	for _, c := range s.lab.Clusters() {
		if c.Name != cluster && strings.Contains(errs, c.Name+": sample pods not Ready") {
			t.Errorf("verify's error names %s, which the istiod still serves:\n%s", c.Name, errs)
		}
	}
	// Which of two ways depends on the API server's connections: a new
	// one to the injector goes where the Service now ends, and is refused
	// (failurePolicy Fail); one it still holds from before the change
	// reaches istiod (as conntrack keeps an established flow in a real
	// cluster), the pods are injected, and their agents, dialling the
	// discovery address anew, reach no istiod.
	refused := strings.Contains(errs, "pods not created (FailedCreate)") && strings.Contains(errs, "failed calling webhook") && strings.Contains(errs, "sidecar-injector.istio.io")
	noIstiod := strings.Contains(errs, "DataPlaneNotReady")
	switch {
	case refused:
		t.Logf("%s's pods were refused at admission", cluster)
	case noIstiod:
		t.Logf("%s's pods were injected; their proxies reach no istiod", cluster)
	default:
		t.Errorf("verify's error says neither that the injector could not be called nor that the data plane is not ready:\n%s", errs)
	}
	s.removeSample()

	// check names the address against the serving gateway's.
	checks, code := s.checks()
	if code == 0 {
		t.Error("check passed with the wrong remotePilotAddress")
	}
	wantCheck(t, checks, "Istio resource consistent", cluster, fmt.Sprintf("global.remotePilotAddress %q, want", wrong))
	wantCheck(t, checks, "Istio resource consistent", cluster, "gateway address "+right)
}

// checkResult is one check of `flotilla check -o json`.
type checkResult struct {
	Name, Cluster, Message string
	OK                     bool
}

// checks runs flotilla check -o json; code is its exit code.
func (s *scenario) checks() ([]checkResult, int) {
	s.t.Helper()
	out, errs, code := s.exec("check", "-o", "json")
	var checks []checkResult
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		s.t.Fatalf("check: exit %d, output is not JSON: %v\n%s\n%s", code, err, out, errs)
	}
	for _, c := range checks {
		if !c.OK {
			s.t.Logf("check %q [%s] failed: %s", c.Name, c.Cluster, c.Message)
		}
	}
	return checks, code
}

// wantCheck asserts that check name of cluster failed with a message
// holding msg.
func wantCheck(t *testing.T, checks []checkResult, name, cluster, msg string) {
	t.Helper()
	for _, c := range checks {
		if c.Name == name && c.Cluster == cluster {
			if c.OK || !strings.Contains(c.Message, msg) {
				t.Errorf("check %q [%s]: ok %v %q, want it failed saying %q", name, cluster, c.OK, c.Message, msg)
			}
			return
		}
	}
	t.Errorf("no check %q for %s", name, cluster)
}

// waitIstiodEndpoint waits until the remote chart's istiod Service in
// cluster ends at addr (its EndpointSlice, rendered from remotePilotAddress).
func waitIstiodEndpoint(t *testing.T, s *scenario, cluster, ns, svc, addr string) {
	t.Helper()
	cs := s.lab.Cluster(cluster).Client()
	var got []string
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		sls, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
		if err != nil {
			return false, nil
		}
		got = nil
		for _, sl := range sls.Items {
			for _, ep := range sl.Endpoints {
				got = append(got, ep.Addresses...)
			}
		}
		return slices.Equal(got, []string{addr}), nil
	})
	if err != nil {
		t.Fatalf("%s: service %s/%s ends at %v, want %s", cluster, ns, svc, got, addr)
	}
}

var istioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
