package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// Phases of a root rotation, each taken by one `flotilla ca rotate root`.
// Istio's plug-in CA procedure, done so that every pair of workloads trusts
// each other at every moment: first every cluster trusts both roots, then
// the intermediates are re-issued under the new root, then the old root is
// dropped.
const (
	// RotationTrustBoth: a new root is generated; every cacerts'
	// root-cert.pem holds the old and the new root; the intermediates, under
	// the old root, are unchanged.
	RotationTrustBoth = "trust-both"
	// RotationSignNew: the new root signs; every intermediate is re-issued
	// under it; root-cert.pem still holds both roots, so certificates from
	// old and new intermediates verify each other.
	RotationSignNew = "sign-with-new"
	// RotationDone: the old root is dropped from every root-cert.pem.
	RotationDone = "done"
)

// RootRotation is what one step of a root rotation did.
type RootRotation struct {
	Phase string `json:"phase"`
	// SigningRoot and TrustedRoots are fingerprints after the step.
	SigningRoot  string   `json:"signingRoot"`
	TrustedRoots []string `json:"trustedRoots"`
	// Next says what the operator does next.
	Next string `json:"next"`
	// Apply is the apply that rolled the step out to every cluster.
	Apply *ApplyReport `json:"apply"`
}

// RotateRoot takes the next step of a root rotation (RotationTrustBoth, then
// RotationSignNew, then RotationDone) in the state and rolls it out to every
// cluster with an apply of m (nil: the last applied spec). Between steps
// the workloads must pick up what the last one wrote (istiod reloads its
// plug-in CA, proxies renew their certificates); Next says what to wait for.
func (h *Hub) RotateRoot(ctx context.Context, m *spec.Mesh) (*RootRotation, error) {
	m, err := h.meshOrStored(ctx, m)
	if err != nil {
		return nil, err
	}
	// Refused for what the spec says of its root, before anything else.
	switch {
	case m.Spec.PKI.Mode == spec.PKICertManager && m.Spec.PKI.CertManager != nil && m.Spec.PKI.CertManager.IssuerRef != nil:
		return nil, errors.New("root rotation: the mesh's intermediates come from your cert-manager issuer (pki.certManager.issuerRef), which holds the root: rotate it there")
	case m.Spec.PKI.Root != nil:
		return nil, errors.New("root rotation: the spec brings its own root (pki.root): flotilla generates a new root only for a root it generated")
	}
	p, err := compile(m)
	if err != nil {
		return nil, err
	}
	// A step that starts a rotation needs a new root: generated outside the
	// write transaction (RSA-4096 takes a while).
	var starts bool
	err = h.Store.View(ctx, func(tx *state.Tx) error {
		ca, ok, err := tx.CA()
		if err != nil || !ok {
			return err
		}
		b, err := pki.ParseBundle(ca.Bundle())
		starts = err == nil && rotationUnderWay(ca, b) == ""
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("root rotation: state: %w", err)
	}
	var fresh *pki.Root
	if starts {
		if fresh, err = pki.NewRoot(p.PKI.Config); err != nil {
			return nil, fmt.Errorf("root rotation: new root: %w", err)
		}
	}
	out := &RootRotation{}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		ca, ok, err := tx.CA()
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("the state holds no root yet: run flotilla apply -f mesh.yaml")
		}
		if !ca.HasRootKey {
			return errors.New("the root key is not in the state (offline root): rotate the root where it is kept, then import it")
		}
		current, err := pki.ImportRootCert(ca.RootCertPEM, h.now())
		if err != nil {
			return fmt.Errorf("stored root: %w", err)
		}
		trusted, err := pki.ParseBundle(ca.Bundle())
		if err != nil {
			return fmt.Errorf("stored trust bundle: %w", err)
		}
		switch rotationUnderWay(ca, trusted) {
		case RotationTrustBoth:
			// Sign with the new root; keep trusting the old one.
			next, err := pki.ImportRootCert(ca.NextRootCertPEM, h.now())
			if err != nil {
				return fmt.Errorf("stored next root: %w", err)
			}
			key, ok, err := tx.Secret(state.SecretNextRootKey)
			if err != nil || !ok {
				return fmt.Errorf("stored next root key: missing (%v)", err)
			}
			if _, err := pki.ImportRoot(ca.NextRootCertPEM, key, h.now()); err != nil {
				return fmt.Errorf("stored next root: %w", err)
			}
			trusted = pki.NewBundle(next.Cert, current.Cert)
			ca.RootCertPEM, ca.NextRootCertPEM, ca.BundlePEM = ca.NextRootCertPEM, nil, trusted.PEM()
			if err := tx.PutRootKey(key); err != nil {
				return err
			}
			if err := tx.DeleteSecret(state.SecretNextRootKey); err != nil {
				return err
			}
			out.Phase = RotationSignNew
			out.Next = "when every workload has a certificate from the new intermediates (restart istiod, then the workloads, or wait for their certificates to renew), run flotilla ca rotate root again to drop the old root"
		case RotationSignNew:
			// Trust the signing root alone.
			trusted = pki.NewBundle(current.Cert)
			ca.BundlePEM = nil
			out.Phase = RotationDone
			out.Next = "the rotation is complete"
		default:
			if fresh == nil {
				return errors.New("the state changed while the new root was made: run flotilla ca rotate root again")
			}
			trusted = pki.NewBundle(current.Cert, fresh.Cert)
			ca.NextRootCertPEM, ca.BundlePEM = fresh.CertPEM, trusted.PEM()
			if err := tx.PutSecret(state.SecretNextRootKey, fresh.Key.Reveal()); err != nil {
				return err
			}
			out.Phase = RotationTrustBoth
			out.Next = "when every istiod and workload trusts both roots (restart istiod, then the workloads), run flotilla ca rotate root again to sign with the new root"
		}
		// The bundle's first root is the one that signs (status and check
		// read root-cert.pem so).
		out.SigningRoot = pki.Fingerprint(trusted.Roots[0])
		out.TrustedRoots = trusted.Fingerprints()
		return tx.PutCA(ca)
	})
	if err != nil {
		return nil, fmt.Errorf("root rotation: state: %w", err)
	}
	h.progressf("", "root rotation: %s (signing root %s)", out.Phase, short(out.SigningRoot))
	if out.Apply, err = h.Apply(ctx, m, ApplyOptions{Source: "rotation"}); err != nil {
		return out, fmt.Errorf("root rotation: %s is recorded; rolling it out failed (run flotilla apply): %w", out.Phase, err)
	}
	return out, nil
}

// rotationUnderWay is the last step of the root rotation under way in ca
// (whose trust bundle is trusted): RotationTrustBoth while a next root waits
// to sign, RotationSignNew while the old root is still trusted beside the
// signing one, "" when no rotation is under way.
func rotationUnderWay(ca state.CA, trusted *pki.Bundle) string {
	switch {
	case len(ca.NextRootCertPEM) > 0:
		return RotationTrustBoth
	case len(trusted.Roots) > 1:
		return RotationSignNew
	}
	return ""
}
