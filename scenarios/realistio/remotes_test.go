package realistio

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/emulator"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

// prLab runs a primary-remote mesh over two networks: pe is the primary,
// pw its remote (clusters of their own: the topology differs from testLab's).
var prLab = lab.NewSharedWith(lab.Options{Clusters: []string{"pe", "pw"}, RealIstio: true, LabLoadBalancers: true})

// TestPrimaryRemoteMultiNetwork applies a primary-remote mesh over two
// networks and checks it with real istiod: the remote runs none, its pods
// are injected through the primary istiod's webhook at the primary's
// east-west gateway (15017) and their proxies take certificates and config
// from that istiod through the same gateway (15012). check passes on
// istiod's own view, and verify answers from both versions on each side
// with no failed request.
func TestPrimaryRemoteMultiNetwork(t *testing.T) {
	l := prLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: primary-remote
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: pe, context: pe, network: network1, kubeconfig: %[1]s}
  - {name: pw, context: pw, network: network2, role: remote, kubeconfig: %[1]s}
`, l.Kubeconfig)
	// The gateways' Envoys run from the start, as in a real cluster: the
	// remote's injection webhook is the primary's istiod through them.
	em := startEmulator(t, l)
	h, m := applyDoc(t, ctx, l, doc)
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
	}
	in := waitIstiodReady(t, ctx, l.Cluster("pe"))
	if got := l.Cluster("pw").Istiods(); len(got) != 0 {
		t.Errorf("remote pw runs istiods %+v, want none", got)
	}
	t.Logf("istiod %s/%s on %s", in.Namespace, in.Pod, in.Address)
	verifyRemotes(t, ctx, l, h, m, em)
	// The remote's proxies reached the primary's istiod through the
	// primary's east-west gateway, and its CA signed them with pe's cacerts.
	wantServedThrough(t, ctx, l, em, "pw", "pe", "istio-system", "istio-system", "istio-eastwestgateway")
}

// extLab runs an external control plane: xc hosts the external istiod (and
// the ingress gateway in front of it), xe is its config cluster, xw a
// further data-plane cluster on another network.
var extLab = lab.NewSharedWith(lab.Options{Clusters: []string{"xc", "xe", "xw"}, RealIstio: true, LabLoadBalancers: true})

// TestExternalControlPlane applies the external control plane topology (the
// OpenShift Service Mesh 3 guide, chapter 8, with a second data-plane
// cluster) under real istiod: the istiod the external-istiod Istio resource
// renders on xc runs with its istio-kubeconfig (xe, its config cluster),
// reads xw through a remote secret, injects the data planes' pods through
// their webhooks (revision external-istiod, reached at xc's ingress
// gateway on 15017) and serves their proxies through that gateway on
// 15012. check passes, and verify answers from v1 (xe) and v2 (xw) on
// each side with no failed request.
func TestExternalControlPlane(t *testing.T) {
	l := extLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: external-control-plane
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: xc, context: xc, network: network1, role: control-plane, kubeconfig: %[1]s}
  - {name: xe, context: xe, network: network1, role: data-plane, kubeconfig: %[1]s}
  - {name: xw, context: xw, network: network2, role: data-plane, kubeconfig: %[1]s}
`, l.Kubeconfig)
	em := startEmulator(t, l)
	h, m := applyDoc(t, ctx, l, doc)
	xc := l.Cluster("xc")
	kc, err := xc.Connect()
	if err != nil {
		t.Fatal(err)
	}
	waitReconciled(t, ctx, kc, xc, "external-istiod")
	var ext lab.IstiodInfo
	for _, in := range xc.Istiods() {
		t.Logf("xc: istiod %s/%s on %s, ready %v", in.Namespace, in.Pod, in.Address, !in.Ready.IsZero())
		if in.Namespace == "external-istiod" {
			ext = in
		}
	}
	if ext.Pod == "" || ext.Ready.IsZero() {
		t.Fatalf("xc runs no ready external istiod: %+v", xc.Istiods())
	}
	for _, c := range []string{"xe", "xw"} {
		if got := l.Cluster(c).Istiods(); len(got) != 0 {
			t.Errorf("data-plane cluster %s runs istiods %+v, want none", c, got)
		}
	}
	verifyRemotes(t, ctx, l, h, m, em)
	for _, c := range []string{"xe", "xw"} {
		wantServedThrough(t, ctx, l, em, c, "xc", "external-istiod", "istio-system", "istio-ingressgateway")
	}
}

// wantServedThrough checks that every proxy in cluster served (sample pods
// and gateways) holds a certificate signed by the intermediate in
// server's cacerts (namespace caNS) and talks to istiod at the address of
// server's gateway gwNS/gw, port 15012: the way the chart's remote values
// send it, through that gateway.
func wantServedThrough(t *testing.T, ctx context.Context, l *lab.Lab, em *emulator.Emulator, served, server, caNS, gwNS, gw string) {
	t.Helper()
	kc, err := l.Cluster(server).Connect()
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kc.Kube.CoreV1().Services(gwNS).Get(ctx, gw, metav1.GetOptions{})
	if err != nil || len(svc.Status.LoadBalancer.Ingress) == 0 {
		t.Fatalf("%s: gateway %s/%s: %v %+v", server, gwNS, gw, err, svc)
	}
	addr, _ := lab.Dialable(net.ParseIP(svc.Status.LoadBalancer.Ingress[0].IP))
	want := net.JoinHostPort(addr.String(), "15012")
	cc, err := pki.ReadCACerts(ctx, kc, caNS)
	if err != nil || cc == nil {
		t.Fatalf("%s: cacerts in %s: %v", server, caNS, err)
	}
	inter, err := x509.ParseCertificate(pemDER(t, cc.CACerts.CACert))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, px := range em.Proxies() {
		if px.Cluster != served {
			continue
		}
		n++
		if px.Istiod != want {
			t.Errorf("%s: proxy %s/%s talks to istiod at %s, want %s's gateway %s", served, px.Namespace, px.Pod, px.Istiod, server, want)
		}
		if px.Cert == nil {
			t.Errorf("%s: proxy %s/%s has no certificate: %s", served, px.Namespace, px.Pod, px.Err)
		} else if err := px.Cert.CheckSignatureFrom(inter); err != nil {
			t.Errorf("%s: proxy %s/%s: certificate not signed by %s's cacerts intermediate: %v", served, px.Namespace, px.Pod, server, err)
		}
	}
	if n < 3 {
		t.Errorf("%s: %d proxies, want the gateway's, curl's and helloworld's", served, n)
	}
}

// verifyRemotes runs flotilla check (every check passes, istiod's own view
// included) and verify (no failed request, both versions from each side).
func verifyRemotes(t *testing.T, ctx context.Context, l *lab.Lab, h *server.Hub, m *spec.Mesh, em *emulator.Emulator) {
	t.Helper()
	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s (hint: %s)", c.Name, c.Cluster, c.Message, c.Hint)
		} else if strings.HasPrefix(c.Name, "istiod") {
			t.Logf("check %s [%s]: %s", c.Name, c.Cluster, c.Message)
		}
	}
	start := time.Now()
	res, err := h.Verify(ctx, m, server.VerifyOptions{Keep: true})
	t.Cleanup(func() { removeSample(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	t.Logf("verify: %s, %.0f ms per request", time.Since(start).Round(100*time.Millisecond), res.RequestMillis)
	for _, c := range res.Clients {
		t.Logf("%s %s: %d requests, answers %v, %d failed %v", c.Cluster, c.Pod, c.Requests, c.Answers, c.Failures, c.Errors)
	}
	if err := res.Err(); err != nil {
		t.Errorf("verify: %v", err)
	}
	for _, px := range em.Proxies() {
		t.Logf("proxy %s %s/%s: node %s, istiod %s, certs %d, responses %v, err %q", px.Cluster, px.Namespace, px.Pod, px.NodeID, px.Istiod, px.Certs, px.Responses, px.Err)
	}
}
