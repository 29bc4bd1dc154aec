package realistio

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/emulator"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
)

// helloCluster is the outbound cluster istiod sends for the sample service.
const (
	helloCluster = "outbound|5000||helloworld.sample.svc.cluster.local"
	// helloSNI is the SNI of mTLS to helloworld, and the name of the
	// cluster an AUTO_PASSTHROUGH gateway routes it by.
	helloSNI     = "outbound_.5000_._.helloworld.sample.svc.cluster.local"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// TestVerifyMultiPrimaryMultiNetwork runs flotilla's verify over a
// multi-primary, multi-network mesh whose sidecars are configured by the
// real istiods: the emulator plays only Envoy and istio-agent
// (the lab runs real Istio), so each pod's certificate comes from its
// istiod's CA and its endpoints from that istiod over xDS. Every request
// of each side must be answered, by v1 and v2 both; the certificate each
// helloworld pod presents must be the one istiod issued to it, signed by
// the cacerts intermediate flotilla wrote; each curl proxy must hold, for
// helloworld, the local pod and the other network's east-west gateway at
// 15443 (what istiod's network view puts in place of the remote pod); each
// gateway, connected as a router, must hold the local helloworld pod for
// the SNI-DNAT cluster its AUTO_PASSTHROUGH routes by; and istiod itself
// must list every sample proxy as connected and count the certificates.
func TestVerifyMultiPrimaryMultiNetwork(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	istiods := map[string]lab.IstiodInfo{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
		istiods[c.Name] = waitIstiodReady(t, ctx, c)
	}
	em := startEmulator(t, l)

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
		t.Fatalf("verify: %v", err)
	}

	proxies := map[string]emulator.ProxyStatus{}
	for _, p := range em.Proxies() {
		if p.Namespace == "sample" {
			proxies[p.Cluster+"/"+p.Pod] = p
		}
	}
	gateways := map[string]string{} // cluster: east-west gateway address
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		svc, err := kc.Kube.CoreV1().Services("istio-system").Get(ctx, "istio-eastwestgateway", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: east-west gateway: %v", c.Name, err)
		}
		for _, in := range svc.Status.LoadBalancer.Ingress {
			gateways[c.Name] = in.IP
		}
	}

	// Each east-west gateway passes TLS through by SNI to the endpoints
	// istiod sent its Envoy for the SNI-DNAT cluster of that name: the
	// local helloworld pod.
	for _, px := range em.Proxies() {
		if px.Namespace != "istio-system" || !strings.HasPrefix(px.Pod, "istio-eastwestgateway") {
			continue
		}
		eps := px.Endpoints[helloSNI]
		t.Logf("%s: gateway %s: node %s, endpoints of %s: %v", px.Cluster, px.Pod, px.NodeID, helloSNI, eps)
		if !strings.HasPrefix(px.NodeID, "router~") || len(eps) != 1 || !strings.HasSuffix(eps[0], ":5000") {
			t.Errorf("%s: gateway %s: node %s, endpoints of %s: %v, want a router with the one local helloworld pod", px.Cluster, px.Pod, px.NodeID, helloSNI, eps)
		}
	}

	for _, c := range l.Clusters() {
		t.Run(c.Name, func(t *testing.T) {
			kc, err := c.Connect()
			if err != nil {
				t.Fatal(err)
			}
			cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
			if err != nil || cc == nil {
				t.Fatalf("%s: cacerts: %v", c.Name, err)
			}
			inter, err := x509.ParseCertificate(pemDER(t, cc.CACerts.CACert))
			if err != nil {
				t.Fatal(err)
			}
			pods, err := kc.Kube.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			addr := istiods[c.Name].Address
			// istiod's own count of what its CA signed: at least one per sample pod.
			if n := istiodMetric(t, ctx, c.Name, addr, "citadel_server_success_cert_issuance_count"); n < float64(len(pods.Items)) {
				t.Errorf("%s: istiod counts %v certificates issued, want at least the %d sample pods'", c.Name, n, len(pods.Items))
			}
			for _, p := range pods.Items {
				px, ok := proxies[c.Name+"/"+p.Name]
				if !ok || px.Cert == nil {
					t.Errorf("%s: pod sample/%s: no certificate from istiod in the emulator's proxy: %+v", c.Name, p.Name, px)
					continue
				}
				// istiod's view of the same connection: the proxy, and the
				// endpoints it watches.
				var ads struct {
					Clients []struct {
						ConnectionID string              `json:"connectionId"`
						Watches      map[string][]string `json:"watches"`
					} `json:"clients"`
				}
				if err := getJSON(ctx, addr, "/debug/adsz?proxyID="+p.Name+"."+p.Namespace, &ads); err != nil || len(ads.Clients) != 1 {
					t.Errorf("%s: istiod's adsz has no connection of proxy %s.%s: %v %+v", c.Name, p.Name, p.Namespace, err, ads)
				} else if w := ads.Clients[0].Watches[endpointType]; !slices.Contains(w, helloCluster) {
					t.Errorf("%s: istiod's adsz: proxy %s does not watch %s: %v", c.Name, ads.Clients[0].ConnectionID, helloCluster, w)
				}
				if px.Responses[endpointType] == 0 {
					t.Errorf("%s: pod sample/%s: no EDS response from istiod: %v", c.Name, p.Name, px.Responses)
				}
				if err := px.Cert.CheckSignatureFrom(inter); err != nil {
					t.Errorf("%s: pod sample/%s: certificate from istiod not signed by the cacerts intermediate %q: %v", c.Name, p.Name, inter.Subject, err)
				}
				t.Logf("%s: pod sample/%s: node %s, %d cert(s) from %s (serial %s, issuer %q), xDS responses %v, helloworld endpoints %v, SANs %v",
					c.Name, p.Name, px.NodeID, px.Certs, px.Istiod, px.Cert.SerialNumber, px.Cert.Issuer, px.Responses, px.Endpoints[helloCluster], px.SANs[helloCluster])
				// istiod names the service's accounts in every cluster as the
				// identities its mTLS may present: the sample's default.
				if want := "spiffe://cluster.local/ns/sample/sa/default"; !slices.Equal(px.SANs[helloCluster], []string{want}) {
					t.Errorf("%s: pod sample/%s: istiod's SANs for %s: %v, want [%s]", c.Name, p.Name, helloCluster, px.SANs[helloCluster], want)
				}
				if strings.HasPrefix(p.Name, "curl") {
					other := "west"
					if c.Name == "west" {
						other = "east"
					}
					want := net.JoinHostPort(gateways[other], "15443")
					if !slices.Contains(px.Endpoints[helloCluster], want) {
						t.Errorf("%s: curl proxy's helloworld endpoints %v lack %s's east-west gateway %s", c.Name, px.Endpoints[helloCluster], other, want)
					}
				}
				if !strings.HasPrefix(p.Name, "helloworld") {
					continue
				}
				served := presented(t, p.Status.PodIP, 5000)
				if served == nil {
					continue
				}
				if served.SerialNumber.Cmp(px.Cert.SerialNumber) != 0 {
					t.Errorf("%s: pod sample/%s presented serial %s, istiod issued %s", c.Name, p.Name, served.SerialNumber, px.Cert.SerialNumber)
				}
				roots := x509.NewCertPool()
				roots.AppendCertsFromPEM(cc.CACerts.RootCert)
				inters := x509.NewCertPool()
				inters.AddCert(inter)
				if _, err := served.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
					t.Errorf("%s: pod sample/%s: presented certificate does not chain to the mesh root through cacerts: %v", c.Name, p.Name, err)
				}
			}
		})
	}
}

// startEmulator runs the data plane over the lab's clusters, taking
// certificates and endpoints from their istiods, until the test ends.
func startEmulator(t *testing.T, l *lab.Lab) *emulator.Emulator {
	t.Helper()
	var cs []emulator.Cluster
	for _, c := range l.Clusters() {
		cs = append(cs, emulator.Cluster{Name: c.Name, Config: c.RESTConfig()})
	}
	em, err := emulator.New(emulator.Config{Clusters: cs, Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = em.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	return em
}

// presented is the certificate a helloworld pod's sidecar presents, read by
// dialling it with TLS as a client whose own certificate it will refuse.
func presented(t *testing.T, podIP string, port int) *x509.Certificate {
	t.Helper()
	lb, ok := lab.Loopback(net.ParseIP(podIP))
	if !ok {
		t.Errorf("pod address %s outside the lab's plan", podIP)
		return nil
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	var got *x509.Certificate
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(lb.String(), strconv.Itoa(port)), &tls.Config{
		InsecureSkipVerify: true,
		Certificates:       []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, err = x509.ParseCertificate(raw[0])
			return err
		},
	})
	if conn != nil {
		conn.Close()
	}
	if got == nil {
		t.Errorf("pod %s: no certificate presented: %v", podIP, err)
	}
	return got
}

// istiodMetric sums a metric's samples in istiod's own metrics (15014).
func istiodMetric(t *testing.T, ctx context.Context, cluster, addr, metric string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, "15014")+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: istiod metrics at %s: %v", cluster, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: istiod metrics at %s: %v", cluster, addr, err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		// name[{labels}] value
		rest, ok := strings.CutPrefix(line, metric)
		if !ok || rest == "" || rest[0] != '{' && rest[0] != ' ' {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		if f := strings.Fields(rest); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// removeSample deletes what verify left (Keep), so the package's other
// tests run in the same lab as before.
func removeSample(t *testing.T, l *lab.Lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			continue
		}
		if err := kc.Kube.CoreV1().Namespaces().Delete(ctx, "sample", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Logf("%s: delete namespace sample: %v", c.Name, err)
		}
	}
}

func pemDER(t *testing.T, b []byte) []byte {
	t.Helper()
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			t.Fatal("no PEM certificate")
		}
		if blk.Type == "CERTIFICATE" {
			return blk.Bytes
		}
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
