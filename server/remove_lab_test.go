package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
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

// TestRemoveUnreachableClusterRetried: a cluster dropped from the spec while
// it cannot be reached stays pending (its reader account, which holds the
// tokens handed out, is not revoked yet); the next apply of the same spec
// revokes it once the cluster answers again. A pending cluster that the spec
// names again is not removed.
func TestRemoveUnreachableClusterRetried(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHub(t)
	var westDown atomic.Bool
	h.Connect = func(c spec.Cluster, kubeconfig string) (*kube.Cluster, error) {
		if c.Name == "west" && westDown.Load() {
			return nil, errors.New("west: dial tcp: connection refused (the test's outage)")
		}
		return kube.FromKubeconfig(c.Name, c.KubeconfigFor(kubeconfig), c.Context)
	}
	both := labMesh(t, l, "ECDSA-P256")
	eastOnly := labMesh(t, l, "ECDSA-P256")
	eastOnly.Spec.Clusters = eastOnly.Spec.Clusters[:1]
	east, _ := l.Cluster("east").Connect()
	eastReadsWest := func() bool {
		_, err := east.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-west", metav1.GetOptions{})
		return err == nil
	}
	westReader := func() bool {
		_, err := l.Cluster("west").Client().CoreV1().ServiceAccounts("istio-system").Get(ctx, federation.ReaderServiceAccount, metav1.GetOptions{})
		return err == nil
	}
	removal := func(rep *ApplyReport) (Step, bool) {
		for _, s := range rep.Steps {
			if s.Cluster == "west" && (s.Step == "remove from mesh" || s.Step == "connect (removal)") {
				return s, true
			}
		}
		return Step{}, false
	}
	apply := func(m *spec.Mesh, o ApplyOptions) *ApplyReport {
		t.Helper()
		rep, err := h.Apply(ctx, m, o)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	if rep := apply(both, ApplyOptions{CACertsPolicy: pki.Replace}); rep.Err() != nil {
		t.Fatalf("apply: %v", rep.Err())
	}
	westDown.Store(true)
	for i := range 2 {
		rep := apply(eastOnly, ApplyOptions{})
		if s, ok := removal(rep); !ok || s.Error == "" {
			t.Fatalf("apply %d with west down: removal step %+v, want a failure", i+1, s)
		}
		// East stops reading west at once (its secrets are east's to prune);
		// revoking west's reader needs west.
		if eastReadsWest() {
			t.Error("east still reads west, which left the spec")
		}
		if !westReader() {
			t.Fatal("west's reader account is gone although west could not be reached")
		}
	}
	westDown.Store(false)
	rep := apply(eastOnly, ApplyOptions{})
	if s, ok := removal(rep); !ok || s.Action != "removed" {
		t.Fatalf("apply with west back: removal step %+v, want removed (report %+v)", s, rep.Steps)
	}
	if westReader() {
		t.Error("west's reader account is still there after the retried removal")
	}
	if _, ok := removal(apply(eastOnly, ApplyOptions{})); ok {
		t.Error("a removal done is tried again")
	}

	// Pending, then named again: it stays in the mesh.
	if rep := apply(both, ApplyOptions{}); rep.Err() != nil {
		t.Fatalf("apply with west again: %v", rep.Err())
	}
	westDown.Store(true)
	apply(eastOnly, ApplyOptions{})
	westDown.Store(false)
	rep = apply(both, ApplyOptions{})
	if s, ok := removal(rep); ok {
		t.Errorf("west, named again, was removed: %+v", s)
	}
	if rep.Err() != nil || !eastReadsWest() {
		t.Errorf("west named again: %v, east reads west: %v", rep.Err(), eastReadsWest())
	}
}
