package server

import (
	"context"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestRemoveClusterLab: applying a spec without a cluster takes it out of
// the mesh: no secret reads it any more and its reader token is refused.
func TestRemoveClusterLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHub(t)
	both := labMesh(t, l, "ECDSA-P256")
	// Other tests of the package wrote cacerts under their own roots.
	if rep, err := h.Apply(ctx, both, ApplyOptions{CACertsPolicy: pki.Replace}); err != nil || rep.Err() != nil {
		t.Fatalf("apply: %v %v", err, rep.Err())
	}
	east, _ := l.Cluster("east").Connect()
	west, _ := l.Cluster("west").Connect()
	sec, err := east.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-west", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(sec.Data["west"])
	if err != nil {
		t.Fatal(err)
	}
	oldToken := cfg.AuthInfos["west"].Token
	if oldToken == "" {
		t.Fatal("remote secret for west carries no token")
	}

	eastOnly, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: `+l.Kubeconfig+`}
`))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := h.Apply(ctx, eastOnly, ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("apply without west: %v %v", err, rep.Err())
	}
	removed := false
	for _, s := range rep.Steps {
		removed = removed || (s.Cluster == "west" && s.Step == "remove from mesh" && s.Action == "removed")
	}
	if !removed {
		t.Fatalf("report does not show west removed: %+v", rep.Steps)
	}
	if _, err := east.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-west", metav1.GetOptions{}); err == nil {
		t.Fatal("east still holds a secret reading west")
	}
	// The API server caches token authentications for ~10s: poll.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rev, err := west.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: oldToken}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !rev.Status.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("west's old reader token still authenticates after the removal")
		}
		time.Sleep(time.Second)
	}
	// Put west back for the package's other tests.
	if rep, err := h.Apply(ctx, both, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("re-apply with west: %v %v", err, rep.Err())
	}
}
