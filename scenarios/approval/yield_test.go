package approval

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// TestHubSignsOnce: handed the same stale copy twice (an informer's, from
// before its own approval and signature), the hub signs once: the second
// reconcile sees the request signed and leaves its certificate alone.
func TestHubSignsOnce(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	east := connect(t, l, "east")
	cpNS, hub := hubNamespace(t, ctx, east)
	name := createIn(t, ctx, east, cpNS, "once", intermediateCSR(t, cpNS), true, cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: certmanager.MeshIssuerName})
	stale := getIn(t, ctx, east, cpNS, name)
	var first []byte
	for i, want := range []issuer.Outcome{issuer.Issued, issuer.Skipped} {
		out, err := hub.Reconcile(ctx, stale.DeepCopy())
		if err != nil || out != want {
			t.Fatalf("east: reconcile %d of CertificateRequest %s/%s: %s, %v; want %s", i+1, cpNS, name, out, err, want)
		}
		got := getIn(t, ctx, east, cpNS, name)
		if c := condition(got, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != issuer.ApprovedReason {
			t.Errorf("east: CertificateRequest %s/%s: Approved %+v, want the hub's", cpNS, name, c)
		}
		if first == nil {
			first = got.Status.Certificate
		} else if string(got.Status.Certificate) != string(first) {
			t.Errorf("east: CertificateRequest %s/%s signed twice: its certificate changed on reconcile %d", cpNS, name, i+1)
		}
	}
}

// hubNamespace is a fresh control-plane namespace in c with flotilla's
// cert-manager objects, and a hub issuer (approving) for it.
func hubNamespace(t *testing.T, ctx context.Context, c *kube.Cluster) (string, *issuer.Controller) {
	t.Helper()
	cpNS := fmt.Sprintf("istio-hub-%x", mrand.Uint32())
	if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cpNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Kube.CoreV1().Namespaces().Delete(context.Background(), cpNS, metav1.DeleteOptions{}) })
	if _, err := certmanager.Apply(ctx, c, certmanager.Config{Cluster: c.Name, Namespace: cpNS}); err != nil {
		t.Fatal(err)
	}
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	return cpNS, &issuer.Controller{Cluster: c, Signer: issuer.Signer{Cluster: c.Name, Namespace: cpNS, Root: root}, Approve: true}
}

// intermediateCSR is a CSR for exactly east's intermediate in cpNS.
func intermediateCSR(t *testing.T, cpNS string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return csr(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"east"}},
		DNSNames: []string{pki.IstiodDNSName(cpNS)},
	})
}

// TestHubApprovalYields: the hub holds a copy of a request from before
// another approver approved it (cert-manager's default approver racing
// the hub); the request as the server has it decides: the other's
// decision stands, and the hub signs on it without an error.
func TestHubApprovalYields(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	east := connect(t, l, "east")
	cpNS, hub := hubNamespace(t, ctx, east)
	name := createIn(t, ctx, east, cpNS, "yield", intermediateCSR(t, cpNS), true, cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: certmanager.MeshIssuerName})
	stale := getIn(t, ctx, east, cpNS, name)
	approveIn(t, ctx, east, cpNS, name)

	out, err := hub.Reconcile(ctx, stale)
	if err != nil || out != issuer.Issued {
		t.Fatalf("east: Reconcile of CertificateRequest %s/%s approved by another: %s, %v; want issued", cpNS, name, out, err)
	}
	got := getIn(t, ctx, east, cpNS, name)
	if c := condition(got, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != "test" {
		t.Errorf("east: CertificateRequest %s/%s: Approved %+v, want the other approver's (reason test)", cpNS, name, c)
	}
	if len(got.Status.Certificate) == 0 {
		t.Errorf("east: CertificateRequest %s/%s not signed", cpNS, name)
	}
}
