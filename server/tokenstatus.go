package server

import (
	"context"
	"time"
)

// CredentialStatus is one reader credential as the state records it: the
// token of Cluster's reader account, held in the remote secrets of HeldBy.
type CredentialStatus struct {
	Cluster  string    `json:"cluster"`
	HeldBy   []string  `json:"heldBy"`
	IssuedAt time.Time `json:"issuedAt"`
	// ExpiresAt and RenewAt are zero for a token that does not expire (a
	// legacy token secret). RenewAt is when the reconcile loop replaces it.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	RenewAt   time.Time `json:"renewAt,omitzero"`
}

// credentialStatus lists the reader credentials of p's clusters, with when
// each expires and is renewed under p's token options.
func (h *Hub) credentialStatus(ctx context.Context, p *plan) ([]CredentialStatus, error) {
	t, err := h.Trust(ctx)
	if err != nil {
		return nil, err
	}
	out := []CredentialStatus{}
	for _, r := range t.Readers {
		if _, ok := p.cluster(r.Cluster); !ok {
			continue
		}
		out = append(out, CredentialStatus{Cluster: r.Cluster, HeldBy: r.HeldBy, IssuedAt: r.IssuedAt,
			ExpiresAt: r.ExpiresAt, RenewAt: p.Federation.Token.RenewAt(r.ExpiresAt)})
	}
	return out, nil
}
