// The removal action of Apply: clusters dropped from the spec leave the
// mesh, and stay pending until they have.

package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// pendingRemovalsKey holds the clusters taken out of the spec whose removal
// from the mesh is not done yet, by name, with their spec entries (how to
// reach them).
const pendingRemovalsKey = "pending-removals"

// pendingRemovals are the clusters to take out of the mesh: those still
// pending from earlier applies and those prev has and clusters has not, less any
// that clusters names again.
func pendingRemovals(tx *state.Tx, prev *spec.Mesh, clusters []spec.Cluster) (map[string]spec.Cluster, error) {
	pending := map[string]spec.Cluster{}
	if _, err := tx.Value(pendingRemovalsKey, &pending); err != nil {
		return nil, fmt.Errorf("read pending removals: %w", err)
	}
	if prev != nil {
		for _, c := range prev.Spec.Clusters {
			pending[c.Name] = c
		}
	}
	for _, c := range clusters {
		delete(pending, c.Name)
	}
	return pending, nil
}

func putPendingRemovals(tx *state.Tx, pending map[string]spec.Cluster) error {
	if err := clearHeldTokenMarks(tx, pending); err != nil {
		return err
	}
	if len(pending) == 0 {
		return tx.DeleteValue(pendingRemovalsKey)
	}
	return tx.PutValue(pendingRemovalsKey, pending)
}

// removeClusters takes the clusters in leaving out of the mesh: the reader
// tokens they held are retired (retireHeldTokens), every secret
// that reads them is deleted, their reader accounts are deleted (which
// revokes the tokens handed out), their intermediate is revoked (the PKI
// step then writes the CRL into every remaining cacerts), and the state
// forgets them. A cluster
// whose removal fails stays pending for the next apply.
func (h *Hub) removeClusters(ctx context.Context, p *plan, leaving map[string]spec.Cluster, o ApplyOptions, rec *recorder) {
	if len(leaving) == 0 {
		return
	}
	gone := slices.Sorted(maps.Keys(leaving))
	if o.DryRun {
		for _, name := range gone {
			rec.add(ctx, Step{Cluster: name, Step: "remove from mesh", Action: "would remove", Detail: "and revoke its intermediate"})
		}
		return
	}
	// The mesh as it was: the spec's clusters and the leaving ones. Its
	// topology may no longer compile (a remote whose primary left too):
	// federation then works from the clusters as they were listed.
	was := *p
	was.Clusters = slices.Clone(p.Clusters)
	for _, name := range gone {
		was.Clusters = append(was.Clusters, leaving[name])
	}
	var members []deploy.Member
	for _, c := range was.Clusters {
		members = append(members, deploy.Member{Name: c.Name, Role: c.Role, Network: c.Network, ControlPlane: c.ControlPlane})
	}
	was.Layout, _ = deploy.Compile(p.Topology, members, p.Layout.Namespaces)
	conns, connErrs := h.connect(was.Clusters, false)
	for _, name := range gone {
		if err := connErrs[name]; err != nil {
			rec.fail(ctx, name, "connect (removal)", err)
		}
	}
	fm := h.federationMesh(&was, members, conns)
	for _, name := range gone {
		// First, and whether or not the leaving cluster answers: what it
		// holds is out of the hub's reach.
		held, err := h.retireHeldTokens(ctx, &was, p, name, leaving, conns)
		if err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("%w (retried by the next apply)", err))
			continue
		}
		if held != "" {
			rec.add(ctx, Step{Cluster: name, Step: "tokens it held", Action: "retired", Detail: held})
		}
		if connErrs[name] != nil {
			continue
		}
		res, err := federation.Remove(ctx, fm, name, was.Federation)
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("%w (retried by the next apply)", err))
			continue
		}
		detail := fmt.Sprintf("%d secret(s) deleted, %d account(s) revoked", len(res.Secrets), len(res.Revoked))
		if n, err := h.removeCertManager(ctx, p, leaving[name], conns[name]); err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("%w (retried by the next apply)", err))
			continue
		} else if n > 0 {
			detail += fmt.Sprintf(", %d cert-manager object(s) deleted", n)
		}
		// The cluster's intermediate is revoked with its removal: from the
		// state (built-in PKI), else from its cacerts (cert-manager's).
		var inCert *x509.Certificate
		var inKey pki.PrivateKeyPEM // cert-manager's, for the intermediate's last CRL
		if was.Layout != nil {
			if ns, ok := was.caNamespace(name); ok {
				if cc, err := pki.ReadCACerts(ctx, conns[name], ns); err == nil && cc != nil {
					inCert, _ = parseCertPEM(cc.CACerts.CACert)
					inKey = cc.CACerts.CAKey
				}
			}
		}
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			if r, ok, err := tx.Cluster(name); err != nil {
				return err
			} else if ok && len(r.IntermediateCertPEM) > 0 {
				if inCert, err = parseCertPEM(r.IntermediateCertPEM); err != nil {
					return fmt.Errorf("stored intermediate: %w", err)
				}
				inKey = pki.PrivateKeyPEM{} // the state's
			}
			if inCert != nil {
				if err := revokeWithKey(tx, name, inCert, inKey, h.now()); err != nil {
					return err
				}
			}
			pending := map[string]spec.Cluster{}
			if _, err := tx.Value(pendingRemovalsKey, &pending); err != nil {
				return err
			}
			delete(pending, name)
			if err := putPendingRemovals(tx, pending); err != nil {
				return err
			}
			return tx.DeleteCluster(name)
		})
		if err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("state: %w", err))
			continue
		}
		if inCert != nil {
			detail += ", intermediate " + pki.Describe(inCert).Serial + " revoked"
		}
		rec.add(ctx, Step{Cluster: name, Step: "remove from mesh", Action: "removed", Detail: detail})
	}
}
