package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// The external control plane of the OpenShift Service Mesh 3 guide
// (chapter 8), with a second data-plane cluster attached the way Istio's
// external control plane guide adds one: cp only hosts the external istiod
// (and its ingress gateway), east is its config cluster, west a further
// data-plane cluster on another network.
var externalClusters = []string{
	"{name: cp, context: cp, network: network1, role: control-plane}",
	"{name: east, context: east, network: network1, role: data-plane}",
	"{name: west, context: west, network: network2, role: data-plane}",
}

// externalNamespace is the external istiod's namespace, on cp and on the
// data-plane clusters alike.
const externalNamespace = "external-istiod"

// TestExternalControlPlane: the data-plane clusters' proxies get their
// config and certificates from the external istiod in cp, reached through
// cp's ingress gateway; the istiod reads east through istio-kubeconfig and
// west through a remote secret. verify runs no workload in cp, so v1 runs in
// east and v2 in west, and each client must reach both.
func TestExternalControlPlane(t *testing.T) {
	wantExternalMesh(t, startExternal(t))
}

// startExternal joins externalLab (cp, east and west) and applies the
// external control plane mesh.
func startExternal(t *testing.T) *scenario {
	t.Helper()
	s := startSharedLab(t, externalLab)
	s.apply("external-control-plane", externalClusters...)
	return s
}

// wantExternalMesh verifies an applied external control plane mesh.
func wantExternalMesh(t *testing.T, s *scenario) {
	t.Helper()
	r, code := s.verify(requests, "--keep")
	t.Cleanup(s.removeSample)
	wantAll(t, r, code, "east", "west")
	for _, c := range []string{"east", "west"} {
		if got := s.lab.Cluster(c).Istiods(); len(got) != 0 {
			t.Errorf("data-plane cluster %s runs istiods %+v, want none", c, got)
		}
	}
	if len(r.Clients) != 2 || r.answers("cp") != nil {
		t.Errorf("clients %+v: want east and west only (cp runs no workloads)", r.Clients)
	}

	// The data planes run no istiod: no intermediate CA key is handed to them.
	for _, c := range []string{"east", "west"} {
		for _, ns := range []string{"istio-system", externalNamespace} {
			if _, err := s.lab.Cluster(c).Client().CoreV1().Secrets(ns).Get(context.Background(), pki.SecretName, metav1.GetOptions{}); err == nil {
				t.Errorf("%s: data-plane cluster holds %s/%s", c, ns, pki.SecretName)
			}
		}
	}

	// check finds each cluster's gateway and CA where this topology puts
	// them: cp's ingress, the data planes' east-west gateways in the external
	// namespace, the external istiod's cacerts, none on the data planes.
	out, errs, code := s.exec("check", "-o", "json")
	var checks []struct {
		Name, Cluster, Message string
		OK                     bool
	}
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("check: exit %d, output is not JSON: %v\n%s\n%s", code, err, out, errs)
	}
	if len(checks) == 0 {
		t.Error("check ran no checks")
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %q [%s] failed: %s", c.Name, c.Cluster, c.Message)
		}
	}
	if code != 0 {
		t.Errorf("check exited %d", code)
	}

	// The external istiod's CA is the cacerts in its own namespace on cp.
	sec, err := s.lab.Cluster("cp").Client().CoreV1().Secrets(externalNamespace).Get(context.Background(), pki.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("cp: the external istiod's plug-in CA: %v", err)
	}
	cc, err := pki.ParseCACerts(sec.Data)
	if err != nil {
		t.Fatalf("cp: secret %s/cacerts: %v", externalNamespace, err)
	}
	for _, c := range []string{"east", "west"} {
		pods, err := s.lab.Cluster(c).Client().CoreV1().Pods("sample").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 0 {
			t.Fatalf("%s: no sample pods", c)
		}
		for _, p := range pods.Items {
			// Injected by the external istiod's revision, through the
			// data-plane cluster's remote webhook.
			var status struct{ Revision string }
			if err := json.Unmarshal([]byte(p.Annotations["sidecar.istio.io/status"]), &status); err != nil || status.Revision != "external-istiod" {
				t.Errorf("%s: pod sample/%s: sidecar status %q: want revision external-istiod", c, p.Name, p.Annotations["sidecar.istio.io/status"])
			}
			if p.Labels["app"] != "helloworld" {
				continue
			}
			chain := servedChain(t, &p)
			wantIssuedBy(t, c+": pod sample/"+p.Name, chain, cc, "spiffe://cluster.local/ns/sample/sa/default")
		}
	}
}

// servedChain is the certificate chain pod's sidecar presents on the
// helloworld port, as istioctl proxy-config secret would show it.
func servedChain(t *testing.T, p *corev1.Pod) []*x509.Certificate {
	t.Helper()
	lb, ok := lab.Loopback(net.ParseIP(p.Status.PodIP))
	if !ok {
		t.Fatalf("pod %s/%s: address %q is outside the lab's plan", p.Namespace, p.Name, p.Status.PodIP)
	}
	var chain []*x509.Certificate
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(lb.String(), strconv.Itoa(5000)), &tls.Config{
		InsecureSkipVerify: true, // the chain is checked below, against cacerts
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return nil
		},
	})
	if err == nil {
		conn.Close()
	}
	if len(chain) == 0 {
		t.Fatalf("pod %s/%s: no certificate on port 5000: %v", p.Namespace, p.Name, err)
	}
	return chain
}

// wantIssuedBy checks that chain's leaf is signed by cacerts' intermediate,
// chains to its root and carries the SPIFFE ID.
func wantIssuedBy(t *testing.T, who string, chain []*x509.Certificate, cc pki.CACerts, spiffe string) {
	t.Helper()
	blk, _ := pem.Decode(cc.CACert)
	if blk == nil {
		t.Fatalf("%s: cacerts ca-cert.pem holds no certificate", who)
	}
	inter, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cc.RootCert)
	pool := x509.NewCertPool()
	pool.AddCert(inter)
	leaf := chain[0]
	if !bytes.Equal(leaf.RawIssuer, inter.RawSubject) || leaf.CheckSignatureFrom(inter) != nil {
		t.Errorf("%s: workload certificate issued by %q, not by the external istiod's intermediate %q", who, leaf.Issuer, inter.Subject)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("%s: workload certificate does not chain to cacerts' root: %v", who, err)
	}
	var ids []string
	for _, u := range leaf.URIs {
		ids = append(ids, u.String())
	}
	if len(ids) != 1 || ids[0] != spiffe {
		t.Errorf("%s: workload identity %v, want %s", who, ids, spiffe)
	}
}

// Negative controls of the external control plane: each must fail for the
// reason named.
func TestExternalControlPlaneNegative(t *testing.T) {
	t.Run("NoConfigSecret", func(t *testing.T) {
		s := startExternal(t)
		// The chart mounts istio-kubeconfig as an optional volume, which
		// istiod reads once at start: without it a restarted external
		// istiod (a rescheduled pod) reads the cluster it runs in, cp, as
		// its config cluster, under east's cluster ID. It still injects
		// (the webhooks reach it through cp's ingress) and still reads
		// west through its remote secret, but east's pods are not in what
		// it reads: their proxies get no configuration.
		cp := s.lab.Cluster("cp").Client()
		if err := cp.CoreV1().Secrets(externalNamespace).Delete(context.Background(), "istio-kubeconfig", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			s.run("apply", "-f", s.mesh)
			s.restartIstiod("cp")
		})
		s.restartIstiodPods("cp")
		out, errs, code := s.exec("verify", "--requests", fmt.Sprint(requests), "--timeout", "45s")
		t.Logf("verify: exit %d\n%s\n%s", code, out, errs)
		if code == 0 {
			t.Fatal("verify passed without the external istiod's config cluster")
		}
		if !strings.Contains(errs, "east: sample pods not Ready in time") || !strings.Contains(errs, "DataPlaneNotReady") {
			t.Errorf("verify's error does not say east's sample pods have no data plane:\n%s", errs)
		}
		if strings.Contains(errs, "west: sample pods not Ready") {
			t.Errorf("verify's error names west, whose pods the istiod still serves:\n%s", errs)
		}
		checks, code := s.checks()
		if code == 0 {
			t.Error("check passed without the external istiod's config cluster")
		}
		wantCheck(t, checks, "remote secrets authenticate", "cp", "secret external-istiod/istio-kubeconfig is missing")
		wantCheck(t, checks, "istiod knows every network's gateway", "cp", "knows no gateway of network network1")
	})

	t.Run("DataPlaneWrongPilotAddress", func(t *testing.T) {
		s := startExternal(t)
		wantWrongPilotRefused(t, s, "west", externalNamespace, externalNamespace, "istiod-"+externalNamespace)
	})
}
