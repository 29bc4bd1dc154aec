package server

import (
	"context"
	"fmt"
	"os"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// checkRootFiles reads and checks the root a spec imports (pki.root) when
// the state has none yet, before an apply records anything: a bad PEM file
// then leaves the state as it was. Errors name the field and the file, never
// the key's content.
func (h *Hub) checkRootFiles(ctx context.Context, r *spec.RootSource) error {
	if r == nil {
		return nil
	}
	if _, _, found, err := h.loadCA(ctx); err != nil || found {
		return err // a stored root wins; the files are not read again
	}
	certPEM, err := os.ReadFile(r.CertFile)
	if err != nil {
		return fmt.Errorf("spec.pki.root.certFile: %w", err)
	}
	if r.KeyFile == "" {
		if _, err := pki.ImportRootCert(certPEM, h.now()); err != nil {
			return fmt.Errorf("spec.pki.root.certFile %s: %w", r.CertFile, err)
		}
		return nil
	}
	keyPEM, err := os.ReadFile(r.KeyFile)
	if err != nil {
		return fmt.Errorf("spec.pki.root.keyFile: %w", err)
	}
	if _, err := pki.ImportRoot(certPEM, keyPEM, h.now()); err != nil {
		return fmt.Errorf("spec.pki.root (certFile %s, keyFile %s): %w", r.CertFile, r.KeyFile, err)
	}
	return nil
}
