package realistio

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// TestAPIServerAccessViaGateway applies a multi-primary mesh over two
// networks whose clusters are read through each other's east-west gateway
// (apiServerAccess: gateway) and checks what real Istio makes of it: each
// remote secret names the other cluster's gateway address on 6443 with
// tls-server-name kubernetes.default.svc; each gateway's router holds the
// listener istiod made of flotilla's Gateway and VirtualService, and the
// emulator passes TLS through by it to the kubernetes Service's endpoint
// istiod sent; each istiod's clusterz shows the other cluster synced over
// that path; check says "via gateway" for every link and passes; a server
// name other than the API server's is closed at the gateway; and
// helloworld answers both ways (verify).
func TestAPIServerAccessViaGateway(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	em := startEmulator(t, l)
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s, apiServerAccess: gateway}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s, apiServerAccess: gateway}
`, l.Kubeconfig)
	h := labHub(t, ctx, l)
	m := applyUntilClean(t, ctx, h, doc)

	gw := map[string]string{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		svc, err := kc.Kube.CoreV1().Services("istio-system").Get(ctx, "istio-eastwestgateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range svc.Status.LoadBalancer.Ingress {
			gw[c.Name] = in.IP
		}
	}
	for _, tc := range []struct{ cluster, other string }{{"east", "west"}, {"west", "east"}} {
		t.Run(tc.cluster, func(t *testing.T) {
			c := l.Cluster(tc.cluster)
			kc, err := c.Connect()
			if err != nil {
				t.Fatal(err)
			}
			s, err := kc.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-"+tc.other, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := clientcmd.Load(s.Data[tc.other])
			if err != nil {
				t.Fatal(err)
			}
			want := "https://" + net.JoinHostPort(gw[tc.other], "6443")
			if got := cfg.Clusters[tc.other]; got == nil || got.Server != want || got.TLSServerName != "kubernetes.default.svc" {
				t.Fatalf("secret istio-remote-secret-%s: %+v, want server %s, tls-server-name kubernetes.default.svc", tc.other, got, want)
			}
			if direct := l.Cluster(tc.other).Server; strings.Contains(string(s.Data[tc.other]), direct) {
				t.Errorf("secret istio-remote-secret-%s names %s's API server address %s", tc.other, tc.other, direct)
			}

			in := waitIstiodReady(t, ctx, c)
			var clusters []struct {
				ID         string `json:"id"`
				SyncStatus string `json:"syncStatus"`
			}
			err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
				clusters = nil
				if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
					return false, nil
				}
				for _, cl := range clusters {
					if cl.ID == tc.other && cl.SyncStatus == "synced" {
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				t.Fatalf("istiod's clusterz does not show %s synced through its gateway: %+v (istiod log %s)", tc.other, clusters, in.Log)
			}
			t.Logf("%s: clusterz %+v; reads %s at %s", tc.cluster, clusters, tc.other, want)
		})
	}

	// Each gateway's router got its listeners from istiod, and the
	// kubernetes Service's endpoint, which the passthrough goes to.
	for _, px := range em.Proxies() {
		if px.Namespace != "istio-system" || !strings.HasPrefix(px.Pod, "istio-eastwestgateway") {
			continue
		}
		eps := px.Endpoints["outbound|443||kubernetes.default.svc.cluster.local"]
		t.Logf("%s: gateway %s: LDS responses %d, kubernetes endpoints %v", px.Cluster, px.Pod, px.Responses[listenerType], eps)
		if px.Responses[listenerType] == 0 || len(eps) != 1 || eps[0] != l.Cluster(px.Cluster).APIEndpoint() {
			t.Errorf("%s: gateway %s: LDS responses %d, kubernetes endpoints %v, want listeners and %s", px.Cluster, px.Pod, px.Responses[listenerType], eps, l.Cluster(px.Cluster).APIEndpoint())
		}
	}

	// Nothing but the API server's name passes on 6443.
	for name, addr := range gw {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(addr, "6443"),
			&tls.Config{ServerName: "istiod.istio-system.svc", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			t.Errorf("%s: gateway %s:6443 completed a TLS handshake for istiod.istio-system.svc", name, addr)
		}
	}

	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	paths := 0
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		}
		if c.Name == "API server path" {
			paths++
			t.Logf("check %s [%s]: %s", c.Name, c.Cluster, c.Message)
			if !strings.Contains(c.Message, "via gateway ") {
				t.Errorf("check %s [%s]: %s, want a path via the gateway", c.Name, c.Cluster, c.Message)
			}
		}
	}
	if paths != 2 {
		t.Errorf("%d API server path checks, want one per link (2)", paths)
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

// applyUntilClean applies doc with hub h until an apply succeeds
// in every cluster (at most three): a gateway path answers once the
// gateway's router has its listeners from istiod, which the first apply
// may reach before, as an operator's second apply or the hub's reconcile
// would.
func applyUntilClean(t *testing.T, ctx context.Context, h *server.Hub, doc string) *spec.Mesh {
	t.Helper()
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for i := 1; i <= 3; i++ {
		start := time.Now()
		rep, err := h.Apply(ctx, m, server.ApplyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if last = rep.Err(); last == nil {
			t.Logf("apply %d: clean in %s", i, time.Since(start).Round(100*time.Millisecond))
			return m
		}
		t.Logf("apply %d: %v", i, last)
		time.Sleep(5 * time.Second)
	}
	t.Fatalf("apply: %v", last)
	return nil
}

// labHub is a hub whose state lives with the lab, not the test: every test
// of the package applies to the same clusters, as an operator runs apply
// again with the same state. A fresh state would make a new mesh root, and
// flotilla rightly refuses to overwrite cacerts that chain to another.
func labHub(t *testing.T, ctx context.Context, l *lab.Lab) *server.Hub {
	t.Helper()
	keyFile := filepath.Join(l.Dir, "flotilla-state.key")
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		k, err := state.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := state.WriteKeyFile(keyFile, k); err != nil {
			t.Fatal(err)
		}
	}
	key, err := state.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(ctx, filepath.Join(l.Dir, "flotilla-state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &server.Hub{Store: st}
}
