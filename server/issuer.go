package server

import (
	"context"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/server/spec"
)

// meshIssuer is the hub's cert-manager external issuer for one cluster,
// or nil when the spec names a root issuer of its own (then cert-manager
// signs without the hub).
func (h *Hub) meshIssuer(m *spec.Mesh, kc *kube.Cluster, ns string, root *pki.Root) *issuer.Controller {
	if cm := m.Spec.PKI.CertManager; cm != nil && cm.IssuerRef != nil {
		return nil
	}
	return &issuer.Controller{
		Cluster: kc,
		Signer:  issuer.Signer{Cluster: kc.Name, Namespace: ns, Root: root, MaxLifetime: m.Spec.PKI.IntermediateTTL.Duration},
		Now:     h.Now,
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
