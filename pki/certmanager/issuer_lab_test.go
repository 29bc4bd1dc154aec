package certmanager_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// writeLegacyRoot writes what earlier versions of flotilla wrote in
// cert-manager mode: the root key as a Secret behind a CA Issuer.
func writeLegacyRoot(t *testing.T, ctx context.Context, c *kube.Cluster, root *pki.Root) {
	t.Helper()
	if _, err := c.Kube.CoreV1().Namespaces().Apply(ctx, corev1ac.Namespace(ns), c.ApplyOptions()); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{pki.ManagedByLabel: pki.ManagedByValue}
	sec := corev1ac.Secret(certmanager.RootSecretName, ns).WithLabels(labels).WithType(corev1.SecretTypeTLS).
		WithData(map[string][]byte{"tls.crt": root.CertPEM, "tls.key": root.Key.Reveal(), "ca.crt": root.CertPEM})
	if _, err := c.Kube.CoreV1().Secrets(ns).Apply(ctx, sec, c.ApplyOptions()); err != nil {
		t.Fatal(err)
	}
	iss := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
		"metadata": map[string]any{"name": certmanager.RootIssuerName, "namespace": ns, "labels": map[string]any{pki.ManagedByLabel: pki.ManagedByValue}},
		"spec":     map[string]any{"ca": map[string]any{"secretName": certmanager.RootSecretName}},
	}}
	if _, err := c.Apply(ctx, iss); err != nil {
		t.Fatal(err)
	}
}

var crGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificaterequests"}

// testRefusals: raw CertificateRequests against east's MeshIssuer that
// are not east's intermediate end Failed, each with the hub's reason.
func testRefusals(t *testing.T, ctx context.Context, c *kube.Cluster) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	subject := func(cluster string) pkix.Name {
		return pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{cluster}}
	}
	for _, tc := range []struct {
		name, namespace string
		key             crypto.Signer
		subject         pkix.Name
		dns             []string
		says            string
	}{
		{"another cluster's intermediate", ns, p256, subject("west"), []string{"istiod.istio-system.svc"}, "L=east"},
		{"from another namespace", "default", p256, subject("east"), []string{"istiod.istio-system.svc"}, "namespace default"},
		{"a SAN outside the profile", ns, p256, subject("east"), []string{"istiod.istio-system.svc", "evil.example"}, "evil.example"},
		{"a weak key", ns, rsa1024, subject("east"), []string{"istiod.istio-system.svc"}, "1024 bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: tc.subject, DNSNames: tc.dns}, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			name := "refuse-" + strings.ToLower(strings.ReplaceAll(tc.name, " ", "-"))
			name = strings.ReplaceAll(name, "'", "")
			cr := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
				"metadata": map[string]any{"name": name, "namespace": tc.namespace},
				"spec": map[string]any{
					"request":   base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
					"isCA":      true,
					"usages":    []any{"digital signature", "cert sign"},
					"issuerRef": map[string]any{"group": v1alpha1.Group, "kind": v1alpha1.MeshIssuerKind, "name": certmanager.MeshIssuerName},
				},
			}}
			if _, err := c.Apply(ctx, cr); err != nil {
				t.Fatal(err)
			}
			var last string
			err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
				u, err := c.Dynamic.Resource(crGVR).Namespace(tc.namespace).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, nil
				}
				conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
				for _, cond := range conds {
					m, _ := cond.(map[string]any)
					if m["type"] == "Ready" {
						last = m["status"].(string) + " " + m["reason"].(string) + ": " + m["message"].(string)
						return m["reason"] == "Failed", nil
					}
				}
				return false, nil
			})
			if err != nil {
				t.Fatalf("never Failed (last Ready: %q): %v", last, err)
			}
			if !strings.Contains(last, tc.says) {
				t.Errorf("reason %q does not say %q", last, tc.says)
			}
			u, _ := c.Dynamic.Resource(crGVR).Namespace(tc.namespace).Get(ctx, name, metav1.GetOptions{})
			if cert, _, _ := unstructured.NestedString(u.Object, "status", "certificate"); cert != "" {
				t.Error("a refused request carries a certificate")
			}
		})
	}
}

// TestLabRemove: a cluster leaving the mesh keeps none of the cert-manager
// objects flotilla made, nor their secrets and requests.
func TestLabRemove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	west := connect(t, "west")
	const leaving = "istio-leaving"
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certmanager.Apply(ctx, west, certmanager.Config{Cluster: "west", Namespace: leaving}); err != nil {
		t.Fatal(err)
	}
	hub := &issuer.Controller{Cluster: west, Signer: issuer.Signer{Cluster: "west", Namespace: leaving, Root: root}}
	hctx, stop := context.WithCancel(ctx)
	go hub.Run(hctx)
	if _, err := certmanager.WaitReady(ctx, west, leaving, nil); err != nil {
		t.Fatal(err)
	}
	stop()
	removed, err := certmanager.Remove(ctx, west, leaving)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %v", removed)
	for _, gvk := range []schema.GroupVersionKind{certmanager.CertificateGVK, certmanager.CertificateRequestGVK, certmanager.IssuerGVK, v1alpha1.MeshIssuerGVK} {
		gvr, _, err := west.Resource(ctx, gvk)
		if err != nil {
			t.Fatal(err)
		}
		list, err := west.Dynamic.Resource(gvr).Namespace(leaving).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range list.Items {
			t.Errorf("%s %s/%s left behind", gvk.Kind, leaving, o.GetName())
		}
	}
	if _, err := west.Kube.CoreV1().Secrets(leaving).Get(ctx, certmanager.IntermediateSecretName, metav1.GetOptions{}); err == nil {
		t.Errorf("secret %s/%s left behind", leaving, certmanager.IntermediateSecretName)
	}
}

// TestLabHubOutage: with the hub down, cert-manager's request for the
// intermediate waits (approved, no Ready condition, nothing failed); once
// the hub is back it is signed and the Certificate turns Ready.
func TestLabHubOutage(t *testing.T) {
	east := connect(t, "east") // starts the lab: before the test's own deadline
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const outage = "istio-outage"
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certmanager.Apply(ctx, east, certmanager.Config{Cluster: "east", Namespace: outage}); err != nil {
		t.Fatal(err)
	}
	var name string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := east.Dynamic.Resource(crGVR).Namespace(outage).List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) == 0 {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(list.Items[0].Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Approved" && m["status"] == "True" {
				name = list.Items[0].GetName()
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("cert-manager made no approved request for the intermediate: %v", err)
	}
	u, err := east.Dynamic.Resource(crGVR).Namespace(outage).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Ready" || m["type"] == "InvalidRequest" {
			t.Fatalf("with the hub down the request has %v", m)
		}
	}
	hub := &issuer.Controller{Cluster: east, Signer: issuer.Signer{Cluster: "east", Namespace: outage, Root: root}}
	go hub.Run(ctx)
	in, err := certmanager.WaitReady(ctx, east, outage, nil)
	if err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if err := pki.CheckIntermediate(in.Cert, "east", outage); err != nil {
		t.Fatal(err)
	}
}
