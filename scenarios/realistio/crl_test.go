package realistio

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/emulator"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestRemovedClusterRefusedByDataPlane: when west leaves the mesh, its
// intermediate is revoked in the root-signed CRL flotilla writes into
// east's cacerts; east's real istiod loads it and publishes it
// (istio-ca-crl in the workload's namespace, what the sidecar mounts and
// gives Envoy); from then on east's helloworld sidecar refuses a request
// presenting a workload certificate issued under west's intermediate,
// which it accepted before the removal, while one issued under east's own
// intermediate still gets its answer. The sidecar's reason is the root's
// revocation of west's intermediate. West re-joins with a new
// intermediate, and east's sidecar accepts that one's workloads.
func TestRemovedClusterRefusedByDataPlane(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	removedClusterRefused(t, ctx, l, h, m)
}

// TestRemovedClusterRefusedByDataPlaneCertManager is
// TestRemovedClusterRefusedByDataPlane in cert-manager mode (the hub signs
// as MeshIssuer, so it holds the root's key; cert-manager keeps each
// intermediate's): south leaves, north's sidecar refuses south's workloads
// for the root's revocation, and accepts those of south's new
// intermediate after the re-join.
func TestRemovedClusterRefusedByDataPlaneCertManager(t *testing.T) {
	l := cmLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, m := applyCertManagerMesh(t, ctx, l)
	removedClusterRefused(t, ctx, l, h, m)
}

// removedClusterRefused is the removal, refusal and re-join of the second
// cluster of m (the one that leaves; west in the variables' names) as the
// first one's (east's) data plane sees it.
func removedClusterRefused(t *testing.T, ctx context.Context, l *lab.Lab, h *server.Hub, m *spec.Mesh) {
	stays, leaves := m.Spec.Clusters[0].Name, m.Spec.Clusters[1].Name
	conns := map[string]*kube.Cluster{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		conns[c.Name] = kc
		waitReconciled(t, ctx, kc, c, "default")
		waitIstiodReady(t, ctx, c)
	}
	east, west := conns[stays], conns[leaves]
	logs := startEmulatorLogged(t, l)
	res, err := h.Verify(ctx, m, server.VerifyOptions{Keep: true})
	t.Cleanup(func() { removeSampleAndWait(t, l) })
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatalf("verify before the removal: %v", err)
	}

	issuer := func(kc *kube.Cluster) (*pki.Issuer, *x509.Certificate) {
		t.Helper()
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", kc.Name, err)
		}
		is, err := pki.NewIssuer(cc.CACerts, 0)
		if err != nil {
			t.Fatalf("%s: %v", kc.Name, err)
		}
		in, err := x509.ParseCertificate(pemDER(t, cc.CACerts.CACert))
		if err != nil {
			t.Fatal(err)
		}
		return is, in
	}
	westIssuer, westInter := issuer(west)
	eastIssuer, _ := issuer(east)
	pods, err := east.Kube.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{LabelSelector: "app=helloworld"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("%s: helloworld pods: %v (%d)", stays, err, len(pods.Items))
	}
	target := pods.Items[0]
	hello := func(is *pki.Issuer) error { return helloAs(ctx, t, is, target.Status.PodIP) }
	if err := hello(westIssuer); err != nil {
		t.Fatalf("before the removal, %s's helloworld refuses a workload of %s's intermediate: %v", stays, leaves, err)
	}

	// The second cluster (west) leaves.
	eastOnly := *m
	eastOnly.Spec.Clusters = m.Spec.Clusters[:1]
	rep, err := h.Apply(ctx, &eastOnly, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		t.Fatalf("apply without %s: %v", leaves, err)
	}
	cc, err := pki.ReadCACerts(ctx, east, "istio-system")
	if err != nil || cc == nil {
		t.Fatalf("%s: cacerts: %v", stays, err)
	}
	crls, err := pki.ParseCRLs(cc.CACerts.CRL)
	if err != nil {
		t.Fatalf("%s: cacerts %s: %v", stays, pki.CRLFile, err)
	}
	root, err := x509.ParseCertificate(pemDER(t, cc.CACerts.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	if c := pki.CRLFrom(crls, root); c == nil || !pki.Revokes(c, westInter.SerialNumber) {
		t.Fatalf("%s's cacerts: the root CRL does not revoke %s's intermediate %s", stays, leaves, pki.Describe(westInter).Serial)
	}

	// istiod loaded it and published it where the sidecar mounts it from.
	start := time.Now()
	var published string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := east.Kube.CoreV1().ConfigMaps("sample").Get(ctx, pki.CRLConfigMap, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		published = cm.Data[pki.CRLFile]
		return published == string(cc.CACerts.CRL), nil
	})
	if err != nil {
		t.Fatalf("%s: istiod did not publish cacerts' CRL in sample/%s (it holds %d bytes, cacerts %d)", stays, pki.CRLConfigMap, len(published), len(cc.CACerts.CRL))
	}
	t.Logf("%s: istiod published the CRL in sample/%s %s after the apply", stays, pki.CRLConfigMap, time.Since(start).Round(100*time.Millisecond))

	// The data plane refuses west's workloads, and serves east's.
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return hello(westIssuer) != nil, nil
	})
	if err != nil {
		t.Fatalf("%s's helloworld sidecar still answers a workload certificate of %s's revoked intermediate", stays, leaves)
	}
	t.Logf("%s's workload refused: %v", leaves, hello(westIssuer))
	// For the root's revocation (west's own CRL is still in ca-crl.pem),
	// as the sidecar's log says. Asked again for a while: a first refusal
	// under a CRL read moments earlier may give another reason.
	want := fmt.Sprintf("certificate %q (serial %x): certificate revoked", westInter.Subject, westInter.SerialNumber)
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		if logs.contains(want) {
			return true, nil
		}
		_ = hello(westIssuer)
		return false, nil
	})
	if err != nil {
		t.Errorf("the emulator's sidecar log never says %s", want)
	}
	if err := hello(eastIssuer); err != nil {
		t.Errorf("%s's helloworld sidecar refuses a workload of its own intermediate: %v", stays, err)
	}

	// West re-joins: a new intermediate, whose workloads east accepts.
	rep, err = h.Apply(ctx, m, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		t.Fatalf("%s re-joins: %v", leaves, err)
	}
	newWest, newInter := issuer(west)
	if newInter.SerialNumber.Cmp(westInter.SerialNumber) == 0 {
		t.Fatalf("re-joined %s has its revoked intermediate", leaves)
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		return hello(newWest) == nil, nil
	})
	if err != nil {
		t.Errorf("%s's helloworld sidecar refuses %s's new intermediate's workloads: %v", stays, leaves, hello(newWest))
	}
	if err := hello(westIssuer); err == nil {
		t.Errorf("after the re-join, %s's sidecar answers %s's revoked intermediate's workloads again", stays, leaves)
	}
}

// removeSampleAndWait is removeSample that returns once the namespaces are
// gone, so that the package's later tests deploy the sample afresh.
func removeSampleAndWait(t *testing.T, l *lab.Lab) {
	removeSample(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			continue
		}
		err = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := kc.Kube.CoreV1().Namespaces().Get(ctx, "sample", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("%s: namespace sample still there after the test", c.Name)
		}
	}
}

// startEmulatorLogged is startEmulator whose log the test can search.
func startEmulatorLogged(t *testing.T, l *lab.Lab) *lines {
	t.Helper()
	var cs []emulator.Cluster
	for _, c := range l.Clusters() {
		cs = append(cs, emulator.Cluster{Name: c.Name, Config: c.RESTConfig()})
	}
	log := &lines{t: t}
	em, err := emulator.New(emulator.Config{Clusters: cs, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = em.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	return log
}

// lines is a log kept for searching, and passed on to the test's.
type lines struct {
	t   *testing.T
	mu  sync.Mutex
	all []string
}

func (w *lines) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.all = append(w.all, string(b))
	w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (w *lines) contains(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.all {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// helloAs sends GET /hello over mTLS to a helloworld pod's sidecar,
// presenting a workload certificate (spiffe://cluster.local/ns/sample/sa/default)
// that is issues; nil when the app answers.
func helloAs(ctx context.Context, t *testing.T, is *pki.Issuer, podIP string) error {
	t.Helper()
	lb, ok := lab.Loopback(net.ParseIP(podIP))
	if !ok {
		t.Fatalf("pod address %s outside the lab's plan", podIP)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wc, err := is.SignWorkload(pki.WorkloadRequest{
		ID:        pki.SPIFFEID{TrustDomain: "cluster.local", Namespace: "sample", ServiceAccount: "default"},
		PublicKey: k.Public(), TTL: time.Hour,
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte
	for _, c := range wc.Chain[:len(wc.Chain)-1] { // leaf and intermediate, as a sidecar sends them
		chain = append(chain, pemDER(t, c))
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
		InsecureSkipVerify: true, // the server side's check is the one under test
		Certificates:       []tls.Certificate{{Certificate: chain, PrivateKey: k}},
		MinVersion:         tls.VersionTLS12,
	}}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(cctx, "tcp", net.JoinHostPort(lb.String(), "5000"))
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /hello HTTP/1.1\r\nHost: helloworld.sample:5000\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body.String(), "Hello version") {
		return fmt.Errorf("answer %d %q", resp.StatusCode, body.String())
	}
	return nil
}
