package realistio

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestCertManagerPKIWithRealIstiod is cert-manager mode (the hub as
// cert-manager's external issuer) read by real istiods: cert-manager issues
// each cluster's intermediate through the hub, flotilla projects it into
// cacerts before istiod starts, and each istiod signs with it (check reads
// the root istiod publishes), no Secret of either cluster holds the root's
// private key, and helloworld answers across the networks with every
// certificate from istiod's CA and every endpoint from istiod's xDS.
func TestCertManagerPKIWithRealIstiod(t *testing.T) {
	l := cmLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h, m := applyCertManagerMesh(t, ctx, l)
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
		waitIstiodReady(t, ctx, c)
	}
	for _, name := range []string{"north", "south"} {
		for _, check := range []string{"intermediate CA valid", "istiod uses the mesh CA", "istiod sees remote clusters", "istiod knows every network's gateway"} {
			ck := waitCheck(t, ctx, h, check, name, true)
			t.Logf("check %s [%s]: %s", check, name, ck.Message)
		}
	}

	root, err := rootOf(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	holders, seen, err := l.SecretsHolding(ctx, root.Cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(holders) > 0 {
		t.Errorf("the root's private key is in %v", holders)
	}
	t.Logf("%d private keys in the lab's Secrets, none the root's", seen)

	startEmulator(t, l)
	res, err := h.Verify(ctx, m, server.VerifyOptions{Keep: true})
	t.Cleanup(func() { removeSample(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if err := res.Err(); err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, c := range res.Clients {
		if c.Failures > 0 || len(c.Answers) < 2 {
			t.Errorf("verify %s: %d failures, answers %v", c.Cluster, c.Failures, c.Answers)
		}
		t.Logf("verify %s: %d requests, answers %v", c.Cluster, c.Requests, c.Answers)
	}
}

// applyCertManagerMesh applies a multi-primary, multi-network mesh in
// cert-manager mode (no issuerRef: the hub signs as MeshIssuer) to north
// and south, with the hub's state kept with the lab.
func applyCertManagerMesh(t *testing.T, ctx context.Context, l *lab.Lab) (*server.Hub, *spec.Mesh) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh2}
spec:
  meshID: mesh2
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: north, context: north, network: network1, kubeconfig: %[1]s}
  - {name: south, context: south, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig)
	return applyDoc(t, ctx, l, doc)
}

// rootOf is the mesh root the hub's state holds.
func rootOf(ctx context.Context, h *server.Hub) (*pki.Root, error) {
	var pemData []byte
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		ca, ok, err := tx.CA()
		if err != nil || !ok {
			return fmt.Errorf("no CA in the state: %v", err)
		}
		pemData = ca.RootCertPEM
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pki.ImportRootCert(pemData, time.Now())
}
