package e2e

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// TestPrimaryRemoteMultiNetwork: west's proxies get config and certificates
// from east's istiod through east's east-west gateway.
func TestPrimaryRemoteMultiNetwork(t *testing.T) {
	s := startModel(t, "east", "west")
	s.apply("primary-remote", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2, role: remote}")
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
		s := startModel(t, "east", "west")
		s.apply("primary-remote", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2, role: remote}")
		west := s.lab.Cluster("west")
		kc, err := west.Connect()
		if err != nil {
			t.Fatal(err)
		}
		gvr := schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
		patch := []byte(`{"spec":{"values":{"global":{"remotePilotAddress":"127.0.0.9"}}}}`)
		if _, err := kc.Dynamic.Resource(gvr).Patch(context.Background(), "default", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		r, code := s.verify(requests)
		if code == 0 {
			t.Fatal("verify passed with the remote pointing at the wrong pilot")
		}
		if a := r.answers("west"); len(a) != 0 {
			t.Errorf("west answers %v: want none (its proxies have no istiod)", a)
		}
		if f := r.lastFailure("west"); !strings.Contains(f, "remotePilotAddress") {
			t.Errorf("west failure %q does not name the pilot address", f)
		}
		if a := r.answers("east"); a["v2"] != 0 {
			t.Errorf("east answers %v: west's unconfigured gateway passed traffic", a)
		}
	})
}
