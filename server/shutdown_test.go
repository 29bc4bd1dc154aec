package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// hangingTransport answers no request: each waits for its context to end,
// standing in for an API server that is slow to answer, and reports that a
// request is in flight.
type hangingTransport struct {
	once    sync.Once
	started chan struct{}
}

func (h *hangingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h.once.Do(func() { close(h.started) })
	<-req.Context().Done()
	return nil, req.Context().Err()
}

// TestServerShutdownAbandonsApply: an apply still running when the grace
// period ends is cancelled; Run returns, and the journal shows the apply
// unfinished (no end, no result) for the next one to converge.
func TestServerShutdownAbandonsApply(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters:
- {name: east, cluster: {server: "https://east.invalid:6443"}}
- {name: west, cluster: {server: "https://west.invalid:6443"}}
contexts:
- {name: east, context: {cluster: east, user: u}}
- {name: west, context: {cluster: west, user: u}}
users:
- {name: u, user: {token: t}}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, kubeconfig, kubeconfig))
	if err != nil {
		t.Fatal(err)
	}

	h := newHub(t)
	hang := &hangingTransport{started: make(chan struct{})}
	h.Connect = func(c spec.Cluster, _ string) (*kube.Cluster, error) {
		return kube.Connect(c.Name, &rest.Config{Host: "https://" + c.Name + ".invalid:6443", Transport: hang})
	}
	s, err := NewServer(context.Background(), h, ServerOptions{
		Listen: "127.0.0.1:0", Token: testToken, Interval: -1, GracePeriod: 100 * time.Millisecond, CAOut: filepath.Join(dir, "ca.pem"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	c, err := NewClient(ClientOptions{URL: s.URL(), Token: testToken, CAFile: filepath.Join(dir, "ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	applied := make(chan error, 1)
	go func() {
		_, err := c.Apply(context.Background(), m, ApplyOptions{})
		applied <- err
	}()
	<-hang.started // the apply is talking to a cluster
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after the grace period")
	}
	if err := <-applied; err == nil {
		t.Error("the abandoned apply reported success to its caller")
	}

	var applies []state.ApplyRecord
	err = h.Store.View(context.Background(), func(tx *state.Tx) error {
		applies, err = tx.Applies(0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(applies) != 1 || !applies[0].End.IsZero() || applies[0].Result != "" {
		t.Fatalf("journal: %+v, want one unfinished apply", applies)
	}
}
