package pkimodes

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var sailIstioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}

// isolatedMesh is a cert-manager mode mesh over east and west in a
// control-plane namespace of its own, so that its objects and root stay
// apart from other tests'. The Sail Istio resource is cluster-scoped with
// an immutable namespace: the test takes it over and leaves none behind.
func isolatedMesh(t *testing.T, l *lab.Lab) (*spec.Mesh, string) {
	t.Helper()
	ns := fmt.Sprintf("istio-cm-%x", rand.Uint32())
	for _, name := range []string{"east", "west"} {
		kc := connectLab(t, l, name)
		deleteIstio(t, kc)
		t.Cleanup(func() {
			deleteIstio(t, kc)
			err := kc.Kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("%s: delete namespace %s: %v", kc.Name, ns, err)
			}
		})
	}
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh-cm-hub}
spec:
  topology: multi-primary
  controlPlaneNamespace: %[2]s
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig, ns))
	if err != nil {
		t.Fatal(err)
	}
	return m, ns
}

func newHub(t *testing.T) *server.Hub {
	t.Helper()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &server.Hub{Store: st}
}

func applyMesh(t *testing.T, ctx context.Context, h *server.Hub, m *spec.Mesh) {
	t.Helper()
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
}

func connectLab(t *testing.T, l *lab.Lab, name string) *kube.Cluster {
	t.Helper()
	kc, err := l.Cluster(name).Connect()
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func deleteIstio(t *testing.T, kc *kube.Cluster) {
	t.Helper()
	err := kc.Dynamic.Resource(sailIstioGVR).Delete(context.Background(), deploy.IstioName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("%s: delete Istio %s: %v", kc.Name, deploy.IstioName, err)
	}
}

// projected is the intermediate and trust bundle in a cluster's cacerts.
func projected(t *testing.T, ctx context.Context, kc *kube.Cluster, ns string) (*x509.Certificate, *pki.Bundle) {
	t.Helper()
	cc, err := pki.ReadCACerts(ctx, kc, ns)
	if err != nil {
		t.Fatal(err)
	}
	if cc == nil {
		t.Fatalf("%s: no secret %s/%s", kc.Name, ns, pki.SecretName)
	}
	in, err := cc.CACerts.Intermediate(kc.Name, ns)
	if err != nil {
		t.Fatalf("%s: secret %s/%s: %v", kc.Name, ns, pki.SecretName, err)
	}
	roots, err := cc.CACerts.Roots()
	if err != nil {
		t.Fatalf("%s: secret %s/%s: %v", kc.Name, ns, pki.SecretName, err)
	}
	return in.Cert, roots
}
