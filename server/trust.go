package server

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/flotillamesh/flotilla/server/state"
)

// Trust is what the hub holds of the mesh's trust: `ca show` (roots, the
// rotation under way, each cluster's intermediate) and the reader
// credentials it handed out. GET /api/v1/trust answers it.
type Trust struct {
	// CA is nil when the state holds no CA (before the first apply, or when
	// cert-manager's issuer holds the root).
	CA *CAInfo `json:"ca,omitempty"`
	// Readers are the reader tokens in remote secrets, by read cluster.
	Readers []ReaderCredential `json:"readers"`
}

// ReaderCredential is the token of Cluster's reader account, handed to
// every cluster that reads it (each holds it in a remote secret).
type ReaderCredential struct {
	Cluster  string    `json:"cluster"`
	HeldBy   []string  `json:"heldBy"`
	IssuedAt time.Time `json:"issuedAt"`
	// ExpiresAt is zero for a token that does not expire.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// Trust reads the CA material and reader credentials from the state.
func (h *Hub) Trust(ctx context.Context) (*Trust, error) {
	t := &Trust{Readers: []ReaderCredential{}}
	var hasCA bool
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		_, ok, err := tx.CA()
		if err != nil {
			return err
		}
		hasCA = ok
		recs, err := tx.Clusters()
		if err != nil {
			return err
		}
		for _, r := range recs {
			// One token per reader account, the newest: a record keeps an
			// entry per set of readers it was ever handed to.
			var newest *state.ReaderToken
			for i, tok := range r.ReaderTokens {
				if newest == nil || tok.IssuedAt.After(newest.IssuedAt) {
					newest = &r.ReaderTokens[i]
				}
			}
			if newest == nil {
				continue
			}
			// Apply records the readers of one token joined with commas.
			held := strings.Split(newest.ReadBy, ",")
			sort.Strings(held)
			t.Readers = append(t.Readers, ReaderCredential{Cluster: r.Name, HeldBy: held, IssuedAt: newest.IssuedAt, ExpiresAt: newest.ExpiresAt})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(t.Readers, func(i, j int) bool { return t.Readers[i].Cluster < t.Readers[j].Cluster })
	if hasCA {
		if t.CA, err = h.CAShow(ctx); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (s *Server) handleTrust(w http.ResponseWriter, r *http.Request) {
	t, err := s.hub.Trust(r.Context())
	if err != nil {
		writeError(w, errorStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}
