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

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// TestHubApprovalYields: the hub holds a copy of a request from before
// another approver approved it; its own approval then conflicts, the
// other's decision stands, and the hub signs on it without an error (as
// happens with cert-manager's default approver on, racing the hub).
func TestHubApprovalYields(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	east := connect(t, l, "east")
	cpNS := fmt.Sprintf("istio-yield-%x", mrand.Uint32())
	if _, err := east.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cpNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = east.Kube.CoreV1().Namespaces().Delete(context.Background(), cpNS, metav1.DeleteOptions{}) })
	if _, err := certmanager.Apply(ctx, east, certmanager.Config{Cluster: "east", Namespace: cpNS}); err != nil {
		t.Fatal(err)
	}
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := csr(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"east"}},
		DNSNames: []string{pki.IstiodDNSName(cpNS)},
	})
	name := createIn(t, ctx, east, cpNS, "yield", req, true, cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: certmanager.MeshIssuerName})
	stale := getIn(t, ctx, east, cpNS, name)
	approveIn(t, ctx, east, cpNS, name)

	hub := &issuer.Controller{Cluster: east, Signer: issuer.Signer{Cluster: "east", Namespace: cpNS, Root: root}, Approve: true}
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
