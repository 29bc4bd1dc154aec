package server

import (
	"context"
	"fmt"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// IntermediateCSRs returns, for every cluster of m that has no intermediate
// yet, a CSR for the offline root to sign. The key of each stays sealed in
// the state; asking again returns the same pending CSR.
func (h *Hub) IntermediateCSRs(ctx context.Context, m *spec.Mesh) (map[string][]byte, error) {
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, c := range p.Clusters {
		ns, holds := p.caNamespace(c.Name)
		if !holds {
			continue // a data-plane cluster: its control plane's intermediate signs for it
		}
		var have, pending bool
		var csr []byte
		err := h.Store.View(ctx, func(tx *state.Tx) error {
			rec, ok, err := tx.Cluster(c.Name)
			if err != nil || !ok {
				return err
			}
			have = len(rec.IntermediateCertPEM) > 0
			pending, csr = len(rec.IntermediateCSRPEM) > 0, rec.IntermediateCSRPEM
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("state: %s: %w", c.Name, err)
		}
		switch {
		case pending:
			out[c.Name] = csr
		case !have:
			req, err := pki.NewIntermediateRequest(c.Name, ns, p.PKI.Config.KeyAlgorithm)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.Name, err)
			}
			err = h.Store.Update(ctx, func(tx *state.Tx) error {
				return tx.PutIntermediateCSR(c.Name, req.CSRPEM, req.Key.Reveal())
			})
			if err != nil {
				return nil, fmt.Errorf("state: %s: store CSR: %w", c.Name, err)
			}
			out[c.Name] = req.CSRPEM
		}
	}
	return out, nil
}

// AcceptIntermediate takes back the intermediate the offline root signed
// for cluster's pending CSR: it must carry the CSR's key, chain to the
// mesh root and have the full intermediate profile. The next apply writes it
// to the cluster's cacerts.
func (h *Hub) AcceptIntermediate(ctx context.Context, m *spec.Mesh, cluster string, signedPEM []byte) (*pki.Intermediate, error) {
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	if _, ok := p.cluster(cluster); !ok {
		return nil, fmt.Errorf("cluster %q is not in mesh %s", cluster, p.Name)
	}
	ns, holds := p.caNamespace(cluster)
	if !holds {
		return nil, errNoIntermediate(cluster)
	}
	root, _, found, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("the state holds no root yet: run flotilla apply -f mesh.yaml (it imports pki.root.certFile)")
	}
	var req *pki.IntermediateRequest
	err = h.Store.View(ctx, func(tx *state.Tx) error {
		rec, ok, err := tx.Cluster(cluster)
		if err != nil {
			return err
		}
		if !ok || len(rec.IntermediateCSRPEM) == 0 {
			return fmt.Errorf("cluster %s has no pending CSR: run flotilla ca csr first", cluster)
		}
		key, err := tx.PendingIntermediateKey(cluster)
		if err != nil {
			return err
		}
		req = &pki.IntermediateRequest{Cluster: cluster, Namespace: ns, CSRPEM: rec.IntermediateCSRPEM, Key: pki.NewPrivateKeyPEM(key)}
		return nil
	})
	if err != nil {
		return nil, err
	}
	in, err := pki.AcceptIntermediate(req, signedPEM, root.CertPEM, h.now())
	if err != nil {
		return nil, fmt.Errorf("%s: signed intermediate: %w", cluster, err)
	}
	// The pending CSR's key becomes the intermediate's key; the CSR is cleared.
	err = h.Store.Update(ctx, func(tx *state.Tx) error { return tx.PutIntermediate(cluster, in.CertPEM, nil) })
	if err != nil {
		return nil, fmt.Errorf("state: %s: store intermediate: %w", cluster, err)
	}
	return in, nil
}
