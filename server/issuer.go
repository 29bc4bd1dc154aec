package server

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/server/spec"
)

// meshIssuer is the hub's cert-manager external issuer for one cluster,
// or nil when the spec names a root issuer of its own (then cert-manager
// signs without the hub).
func (h *Hub) meshIssuer(p pkiPlan, kc *kube.Cluster, ns string, root *pki.Root) *issuer.Controller {
	if p.IssuerRef != nil {
		return nil
	}
	return &issuer.Controller{
		Cluster: kc,
		Signer:  issuer.Signer{Cluster: kc.Name, Namespace: ns, Root: root, MaxLifetime: p.Config.IntermediateLifetime},
		Now:     h.Now,
		// The hub approves its own issuer's requests by the signing
		// policy, so that a cert-manager without its default approver
		// (approval by policy) still gets its intermediate.
		Approve: true,
	}
}

// signWhileWaiting marks the MeshIssuer, signs what is pending (a renewal
// cert-manager asked for since the last apply) and keeps signing until
// wait ends, so that an apply without a running hub still gets its
// intermediate.
func (h *Hub) signWhileWaiting(ctx, wait context.Context, hub *issuer.Controller) error {
	if hub == nil || hub.Cluster.DryRun {
		return nil
	}
	if err := hub.MarkIssuer(ctx, certmanager.MeshIssuerName); err != nil {
		return err
	}
	if _, err := hub.SignPending(ctx); err != nil {
		return err
	}
	go hub.Run(wait)
	return nil
}

// removeCertManager deletes the cert-manager objects flotilla made in a
// leaving cluster, in cert-manager mode; it returns how many went.
func (h *Hub) removeCertManager(ctx context.Context, p *plan, leaving spec.Cluster, kc *kube.Cluster) (int, error) {
	if p.PKI.Mode != spec.PKICertManager || kc == nil {
		return 0, nil
	}
	ns := p.Layout.Namespaces.CAOf(cmp.Or(leaving.Role, deploy.RolePrimary))
	if ns == "" {
		return 0, nil
	}
	removed, err := certmanager.Remove(ctx, kc, ns)
	return len(removed), err
}

// reissueUnderRoot has cert-manager re-issue an intermediate that the
// signing root did not sign (a root rotation's sign-with-new step): the
// hub's issuer, running until wait ends, signs the renewal with the
// current root. Without the hub's issuer (a user's root issuer) the
// intermediate is what that issuer made and stays.
func (h *Hub) reissueUnderRoot(ctx, wait context.Context, hub *issuer.Controller, ns string, root *pki.Root, in *certmanager.Issued) (*certmanager.Issued, bool, error) {
	if hub == nil || root == nil || in == nil || in.Cert.CheckSignatureFrom(root.Cert) == nil {
		return in, false, nil
	}
	kc := hub.Cluster
	if err := certmanager.Renew(ctx, kc, ns); err != nil {
		return nil, false, err
	}
	next, err := certmanager.WaitReady(wait, kc, ns, in.Cert)
	if err != nil {
		return nil, false, fmt.Errorf("%s: re-issue the intermediate under root %s: %w", kc.Name, pki.Fingerprint(root.Cert), err)
	}
	return next, true, nil
}

// rotateCertManagerIntermediate is `ca rotate intermediate` in
// cert-manager mode: cert-manager re-issues the intermediate (a new key:
// rotationPolicy Always), the hub's issuer signs it, cacerts follows. Once
// the mesh revoked an intermediate, the new one's CRL goes into the other
// clusters' cacerts first, as in built-in mode.
func (h *Hub) rotateCertManagerIntermediate(ctx context.Context, pl *plan, sc spec.Cluster, ns string) (*Step, error) {
	p := pl.PKI
	root, bundle, _, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	conns, errs := h.connect([]spec.Cluster{sc}, false)
	if err := errs[sc.Name]; err != nil {
		return nil, err
	}
	kc := conns[sc.Name]
	old, err := certmanager.ReadIssued(ctx, kc, ns)
	if err != nil {
		return nil, err
	}
	if err := certmanager.Renew(ctx, kc, ns); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, certManagerIssueTimeout)
	defer cancel()
	if err := h.signWhileWaiting(ctx, wctx, h.meshIssuer(p, kc, ns, root)); err != nil {
		return nil, err
	}
	in, err := certmanager.WaitReady(wctx, kc, ns, old.Cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sc.Name, err)
	}
	// The source writes the new intermediate's CRL into the other
	// clusters' cacerts first.
	crl, err := h.certManagerCRL(ctx, pl, root, bundle, &recorder{h: h})
	if err != nil {
		return nil, err
	}
	res, err := certmanager.ProjectCRL(ctx, kc, ns, bundle, pki.Refuse, crl.source())
	if err != nil {
		return nil, err
	}
	return &Step{Cluster: sc.Name, Step: "cacerts " + ns + "/" + pki.SecretName, Action: string(res.Action),
		Detail: fmt.Sprintf("intermediate re-issued by cert-manager, serial %s, expires %s", pki.Describe(in.Cert).Serial, in.Cert.NotAfter.UTC().Format(time.DateOnly))}, nil
}
