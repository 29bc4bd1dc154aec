package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// CAInfo is what `flotilla ca show` prints: the roots the mesh trusts and
// each cluster's intermediate, without any key.
type CAInfo struct {
	Source        string         `json:"source,omitempty"`
	RootKeyStored bool           `json:"rootKeyStored"`
	Roots         []pki.CertInfo `json:"roots"`
	// RootRotation is the last step of a root rotation under way
	// (RotationTrustBoth or RotationSignNew); empty when none is.
	RootRotation  string                  `json:"rootRotation,omitempty"`
	Intermediates map[string]pki.CertInfo `json:"intermediates"`
	// Revoked are the intermediates of clusters that left the mesh.
	Revoked []RevokedInfo `json:"revoked,omitempty"`
	// CRL is the ca-crl.pem written into every cacerts (nil while nothing
	// is revoked).
	CRL *CRLInfo `json:"crl,omitempty"`
}

// CAShow describes the CA material in the state.
func (h *Hub) CAShow(ctx context.Context) (*CAInfo, error) {
	info := &CAInfo{Intermediates: map[string]pki.CertInfo{}}
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		ca, ok, err := tx.CA()
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the state holds no CA yet: run flotilla apply -f mesh.yaml")
		}
		info.Source, info.RootKeyStored = string(ca.Source), ca.HasRootKey
		b, err := pki.ParseBundle(ca.Bundle())
		if err != nil {
			return fmt.Errorf("stored trust bundle: %w", err)
		}
		for _, r := range b.Roots {
			info.Roots = append(info.Roots, pki.Describe(r))
		}
		info.RootRotation = rotationUnderWay(ca, b)
		if info.CRL, info.Revoked, err = crlInfo(tx); err != nil {
			return err
		}
		recs, err := tx.Clusters()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if len(r.IntermediateCertPEM) == 0 {
				continue
			}
			c, err := parseCertPEM(r.IntermediateCertPEM)
			if err != nil {
				return fmt.Errorf("%s: stored intermediate: %w", r.Name, err)
			}
			info.Intermediates[r.Name] = pki.Describe(c)
		}
		return nil
	})
	if err == nil && info.CRL != nil {
		if p, perr := h.planOf(ctx, nil); perr == nil {
			info.CRL.Unenforced = crlUnenforced(p)
		}
	}
	return info, err
}

// ClusterCACerts assembles a cluster's cacerts from the state (for export).
func (h *Hub) ClusterCACerts(ctx context.Context, cluster, namespace string) (pki.CACerts, error) {
	root, bundle, found, err := h.loadCA(ctx)
	if err != nil {
		return pki.CACerts{}, fmt.Errorf("state: %w", err)
	}
	if !found {
		return pki.CACerts{}, fmt.Errorf("the state holds no CA yet: run flotilla apply -f mesh.yaml")
	}
	in, err := h.requireIntermediate(ctx, cluster, namespace)
	if err != nil {
		return pki.CACerts{}, err
	}
	return pki.NewCACerts(in, root, bundle)
}

// storedIntermediate loads a cluster's intermediate and its key from the
// state; nil (and no error) when the state has none for it yet.
func (h *Hub) storedIntermediate(ctx context.Context, cluster, namespace string) (*pki.Intermediate, error) {
	var in *pki.Intermediate
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		rec, ok, err := tx.Cluster(cluster)
		if err != nil || !ok || len(rec.IntermediateCertPEM) == 0 || !rec.HasIntermediateKey {
			return err
		}
		key, err := tx.IntermediateKey(cluster)
		if err != nil {
			return fmt.Errorf("cluster %s: intermediate key: %w", cluster, err)
		}
		in, err = pki.LoadIntermediate(cluster, namespace, rec.IntermediateCertPEM, pki.NewPrivateKeyPEM(key))
		return err
	})
	return in, err
}

// requireIntermediate is storedIntermediate for callers that need one.
func (h *Hub) requireIntermediate(ctx context.Context, cluster, namespace string) (*pki.Intermediate, error) {
	in, err := h.storedIntermediate(ctx, cluster, namespace)
	if err == nil && in == nil {
		err = fmt.Errorf("cluster %s has no intermediate in the state", cluster)
	}
	return in, err
}

// RotateIntermediate issues a new intermediate for the cluster under the
// same root, stores it, and replaces the cluster's cacerts. Workload
// certificates of the old intermediate stay valid for peers: same root.
func (h *Hub) RotateIntermediate(ctx context.Context, m *spec.Mesh, cluster string) (*Step, error) {
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	sc, err := p.clusterOrError(cluster)
	if err != nil {
		return nil, err
	}
	ns, holds := p.caNamespace(cluster)
	if !holds {
		return nil, errNoIntermediate(cluster)
	}
	if p.PKI.Mode == spec.PKICertManager {
		return h.rotateCertManagerIntermediate(ctx, p, sc, ns)
	}
	root, bundle, _, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if root == nil || !root.HasKey() {
		return nil, fmt.Errorf("the root key is not in the state (offline or no root): rotate through flotilla ca csr and ca accept")
	}
	old, err := h.requireIntermediate(ctx, cluster, ns)
	if err != nil {
		return nil, err
	}
	in, cc, err := root.RotateIntermediate(old, p.PKI.Config, bundle)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cluster, err)
	}
	conns, errs := h.connect([]spec.Cluster{sc}, false)
	if err := errs[cluster]; err != nil {
		return nil, err
	}
	// Store first: a cacerts the state does not know would look foreign.
	if err := h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.PutIntermediate(cluster, in.CertPEM, in.Key.Reveal())
	}); err != nil {
		return nil, fmt.Errorf("state: store intermediate: %w", err)
	}
	// Its new CRL joins ca-crl.pem. The other clusters get it first: once a
	// CRL is in use their Envoys refuse workloads of an intermediate that
	// signed none.
	if cc.CRL, err = h.ensureCRL(ctx, root, false, &recorder{h: h}); err != nil {
		return nil, fmt.Errorf("%s: CRL: %w", cluster, err)
	}
	if len(cc.CRL) > 0 {
		if err := h.writeCRLToOthers(ctx, p, cluster, root, bundle, cc.CRL); err != nil {
			return nil, fmt.Errorf("%s: the other clusters' CRL (rotate again, or run flotilla apply): %w", cluster, err)
		}
	}
	res, err := pki.WriteCACerts(ctx, conns[cluster], ns, cc, pki.Refuse)
	if err != nil {
		return nil, err
	}
	return &Step{Cluster: cluster, Step: "cacerts " + ns + "/" + pki.SecretName, Action: string(res.Action),
		Detail: fmt.Sprintf("intermediate serial %s, expires %s", pki.Describe(in.Cert).Serial, in.Cert.NotAfter.UTC().Format("2006-01-02"))}, nil
}

// writeCRLToOthers rewrites the cacerts of every cluster but except with
// its stored intermediate and crl.
func (h *Hub) writeCRLToOthers(ctx context.Context, p *plan, except string, root *pki.Root, bundle *pki.Bundle, crl []byte) error {
	var others []spec.Cluster
	for _, c := range p.Clusters {
		if _, holds := p.caNamespace(c.Name); holds && c.Name != except {
			others = append(others, c)
		}
	}
	conns, errs := h.connect(others, false)
	var all []error
	for _, c := range others {
		if err := errs[c.Name]; err != nil {
			all = append(all, err)
			continue
		}
		ns, _ := p.caNamespace(c.Name)
		in, err := h.requireIntermediate(ctx, c.Name, ns)
		if err != nil {
			all = append(all, err)
			continue
		}
		cc, err := pki.NewCACerts(in, root, bundle)
		if err != nil {
			all = append(all, err)
			continue
		}
		cc.CRL = crl
		if _, err := pki.WriteCACerts(ctx, conns[c.Name], ns, cc, pki.Refuse); err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}
