// The CRL in cert-manager mode: cert-manager keeps each cluster's
// intermediate key in the cluster (the Secret the hub projects cacerts
// from), the hub keeps the root's. Each intermediate's own CRL is signed
// while the hub has its key in hand for the projection, and only that CRL
// is kept; the root's CRL is the hub's, as in built-in mode.

package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/server/spec"
)

// cmCRL is the CRL of a mesh in cert-manager mode once it revoked an
// intermediate.
type cmCRL struct {
	h      *Hub
	p      *plan
	root   *pki.Root
	bundle *pki.Bundle
	// holders are the clusters of the spec with an intermediate of their own.
	holders map[string]bool
	rec     *recorder
}

// certManagerCRL is the mesh's CRL in cert-manager mode; nil while nothing
// is revoked, and nil when the spec names an issuer of its own
// (issuerRef): that issuer's root signed the intermediates and the hub
// cannot revoke them (check says so, crlCheck).
func (h *Hub) certManagerCRL(ctx context.Context, p *plan, root *pki.Root, bundle *pki.Bundle, rec *recorder) (*cmCRL, error) {
	if root == nil || p.PKI.IssuerRef != nil {
		return nil, nil
	}
	active, err := h.crlActive(ctx)
	if err != nil || !active {
		return nil, err
	}
	c := &cmCRL{h: h, p: p, root: root, bundle: bundle, holders: map[string]bool{}, rec: rec}
	for _, cl := range p.Clusters {
		if _, ok := p.caNamespace(cl.Name); ok {
			c.holders[cl.Name] = true
		}
	}
	return c, nil
}

// sign brings the CRL record up to date with the intermediates in hand:
// each signs its own CRL when the record has none fresh from it, and the
// root's CRL is signed anew when due. It returns ca-crl.pem and those in
// hand that signed a new CRL.
func (c *cmCRL) sign(ctx context.Context, inHand map[string]*certmanager.Issued) ([]byte, []string, error) {
	ext := &externalCAs{Holders: c.holders, InHand: map[string]*pki.Intermediate{}}
	for name, in := range inHand {
		inter, err := pki.LoadIntermediate(name, "", encodePEMCert(in.Cert), in.Key)
		if err != nil {
			return nil, nil, err
		}
		ext.InHand[name] = inter
	}
	crl, err := c.h.ensureCRLWith(ctx, c.root, false, c.rec, ext)
	return crl, ext.Signed, err
}

// source is what each projection of cacerts carries as ca-crl.pem; nil
// (no CRL) for a nil c. An intermediate new to the CRL (cert-manager
// renewed it) has its CRL written into the other clusters' cacerts before
// its own cacerts is: their Envoys refuse its workloads until then.
func (c *cmCRL) source() certmanager.CRLSource {
	if c == nil {
		return nil
	}
	return func(ctx context.Context, cluster string, in *certmanager.Issued) ([]byte, error) {
		crl, signed, err := c.sign(ctx, map[string]*certmanager.Issued{cluster: in})
		if err != nil || len(signed) == 0 {
			return crl, err
		}
		if err := c.projectOthers(ctx, cluster); err != nil {
			return nil, fmt.Errorf("the other clusters' %s first: %w", pki.CRLFile, err)
		}
		return crl, nil
	}
}

// plain is source without the projection of the other clusters.
func (c *cmCRL) plain() certmanager.CRLSource {
	return func(ctx context.Context, cluster string, in *certmanager.Issued) ([]byte, error) {
		crl, _, err := c.sign(ctx, map[string]*certmanager.Issued{cluster: in})
		return crl, err
	}
}

// projectOthers projects the cacerts of every cluster but except again,
// with the current CRL.
func (c *cmCRL) projectOthers(ctx context.Context, except string) error {
	var others []spec.Cluster
	for _, cl := range c.p.Clusters {
		if _, holds := c.p.caNamespace(cl.Name); holds && cl.Name != except {
			others = append(others, cl)
		}
	}
	conns, errs := c.h.connect(others, false)
	var all []error
	for _, cl := range others {
		if err := errs[cl.Name]; err != nil {
			all = append(all, err)
			continue
		}
		ns, _ := c.p.caNamespace(cl.Name)
		if _, err := certmanager.ProjectCRL(ctx, conns[cl.Name], ns, c.bundle, pki.Refuse, c.plain()); err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}
