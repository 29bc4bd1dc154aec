// Package pkimodes runs the apply engine against lab clusters in each PKI
// mode that needs more than the API server (cert-manager's controllers).
package pkimodes

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var testLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, CertManager: true})

// trioLab is for what takes three clusters (one leaves, two stay); started
// only by the tests that use it.
var trioLab = lab.NewSharedWith(lab.Options{Clusters: []string{"north", "south", "centre"}, CertManager: true})

func TestMain(m *testing.M) { os.Exit(lab.RunShared(m, testLab, trioLab)) }

// TestCertManagerMode applies a mesh whose intermediates cert-manager issues:
// each cluster's cacerts is the projection of cert-manager's intermediate,
// both chain to the mesh root, and a second apply changes nothing.
func TestCertManagerMode(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh-cm}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256, certManager: {csrAgent: {image: flotilla:test}}}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig)
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := state.GenerateKey()
	st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &server.Hub{Store: st}
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	roots := map[string]bool{}
	for _, name := range []string{"east", "west"} {
		kc, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		issued, err := certmanager.ReadIssued(ctx, kc, "istio-system")
		if err != nil {
			t.Fatalf("%s: cert-manager's intermediate: %v", name, err)
		}
		in, err := cc.CACerts.Intermediate(name, "istio-system")
		if err != nil {
			t.Fatal(err)
		}
		if !in.Cert.Equal(issued.Cert) {
			t.Fatalf("%s: cacerts ca-cert.pem is not cert-manager's intermediate", name)
		}
		if err := cc.CACerts.Validate(time.Now()); err != nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		info, _ := cc.CACerts.Describe()
		roots[info.Roots[0].Fingerprint] = true
		crs, err := kc.Dynamic.Resource(certificatesGVR).Namespace("istio-system").Get(ctx, certmanager.IntermediateCertificateName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: Certificate %s: %v", name, certmanager.IntermediateCertificateName, err)
		}
		if isCA, _, _ := nestedBool(crs.Object, "spec", "isCA"); !isCA {
			t.Fatalf("%s: the intermediate's Certificate is not isCA", name)
		}
	}
	if len(roots) != 1 {
		t.Fatalf("%d roots across clusters, want 1", len(roots))
	}
	// The hub signed each intermediate (pathlen:0, the full built-in
	// profile) and no Secret anywhere holds the root's key.
	var rootCert *x509.Certificate
	for _, name := range []string{"east", "west"} {
		kc, _ := l.Cluster(name).Connect()
		cc, _ := pki.ReadCACerts(ctx, kc, "istio-system")
		in, err := cc.CACerts.Intermediate(name, "istio-system")
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.CheckIntermediate(in.Cert, name, "istio-system"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		b, _ := cc.CACerts.Roots()
		rootCert = b.Roots[0]
	}
	holders, seen, err := l.SecretsHolding(ctx, rootCert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(holders) > 0 || seen == 0 {
		t.Fatalf("root key in %v (%d private keys looked at)", holders, seen)
	}
	// istio-csr style: the agent runs in each cluster and istiod points at it.
	for _, name := range []string{"east", "west"} {
		kc, _ := l.Cluster(name).Connect()
		if _, err := kc.Kube.AppsV1().Deployments("istio-system").Get(ctx, csragent.ServiceName, metav1.GetOptions{}); err != nil {
			t.Fatalf("%s: csr-agent Deployment: %v", name, err)
		}
		istio, err := kc.Dynamic.Resource(schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		addr, _, _ := unstructured.NestedString(istio.Object, "spec", "values", "global", "caAddress")
		caServer, _, _ := unstructured.NestedString(istio.Object, "spec", "values", "pilot", "env", "ENABLE_CA_SERVER")
		if addr != csragent.Address("istio-system") || caServer != "false" {
			t.Fatalf("%s: Istio global.caAddress %q, ENABLE_CA_SERVER %q; want %q and \"false\"", name, addr, caServer, csragent.Address("istio-system"))
		}
	}
	rep2, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep2.Steps {
		if strings.HasPrefix(s.Step, "cacerts") && s.Action != "unchanged" {
			t.Errorf("second apply: %s %s: %s, want unchanged", s.Cluster, s.Step, s.Action)
		}
	}
	checks, err := h.Check(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("check %s [%s] failed: %s", c.Name, c.Cluster, c.Message)
		}
	}
}

var certificatesGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}

func nestedBool(obj map[string]any, fields ...string) (bool, bool, error) {
	return unstructured.NestedBool(obj, fields...)
}
