package server

import (
	"context"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestRotateRootRefuses: a rotation flotilla cannot carry out safely is
// refused before anything is written, with the reason.
func TestRotateRootRefuses(t *testing.T) {
	doc := func(pki string) *spec.Mesh {
		m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  pki: `+pki+`
  clusters:
  - {name: east, context: east, network: network1}
`))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	byo := doc("{keyAlgorithm: ECDSA-P256}")
	byo.Spec.PKI.Root = &spec.RootSource{CertFile: "root-cert.pem"}
	tests := []struct {
		name string
		mesh *spec.Mesh
		want string
	}{
		{"cert-manager with the user's issuer", doc("{mode: cert-manager, certManager: {issuerRef: {name: corp, kind: ClusterIssuer}}}"), "issuerRef"},
		{"cert-manager with the hub's issuer joins rotation", doc("{mode: cert-manager}"), "holds no root yet"},
		{"own root", byo, "brings its own root"},
		{"no root yet", doc("{keyAlgorithm: ECDSA-P256}"), "holds no root yet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHub(t)
			_, err := h.RotateRoot(context.Background(), tc.mesh)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			var found bool
			if err := h.Store.View(context.Background(), func(tx *state.Tx) error {
				var err error
				_, found, err = tx.CA()
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if found {
				t.Error("a refused rotation wrote a CA")
			}
		})
	}
}
