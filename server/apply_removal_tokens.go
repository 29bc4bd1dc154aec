// The tokens a leaving cluster held: its remote secrets carried the reader
// token of every cluster it read, and a reader's token is shared by all its
// readers, so deleting those secrets takes nothing out of the hands of
// whoever copied them. Each such token is replaced the way a renewal
// replaces it (mint, write every remaining reader's secret, revoke after
// SupersededGrace), or revoked at once when no other cluster reads its
// cluster.

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// heldTokensRetiredKey marks the pending removals whose held tokens were
// already retired, so that a removal retried while its cluster is
// unreachable does not re-issue them on every apply.
const heldTokensRetiredKey = "pending-removals/held-tokens-retired"

// heldReads are the clusters a leaving cluster read (in the mesh as it
// was) that stay in the mesh: Reissue are still read by another cluster,
// Orphaned by none, with the accounts the leaving cluster read them as.
type heldReads struct {
	Reissue  []string
	Orphaned map[string][]federation.Account
}

// readsOf works out heldReads of name. Without the old layout (it no
// longer compiles) every cluster in the spec is re-issued: safe, if more
// than needed.
func readsOf(was, now *plan, name string, leaving map[string]spec.Cluster) heldReads {
	out := heldReads{Orphaned: map[string][]federation.Account{}}
	stays := func(c string) bool { _, gone := leaving[c]; return !gone && c != name }
	if was.Layout == nil {
		for _, c := range now.Clusters {
			if stays(c.Name) {
				out.Reissue = append(out.Reissue, c.Name)
			}
		}
		return out
	}
	readers := map[string]bool{}
	if now.Layout != nil {
		for _, l := range federation.NewPlan(now.Layout).Links {
			readers[l.Target] = true
		}
	}
	for _, l := range federation.NewPlan(was.Layout).LinksFrom(name) {
		switch {
		case !stays(l.Target):
		case readers[l.Target]:
			if !slices.Contains(out.Reissue, l.Target) {
				out.Reissue = append(out.Reissue, l.Target)
			}
		default:
			a := was.Federation.AccountFor(was.Topology, l, "")
			a.Writer = false
			if !slices.Contains(out.Orphaned[l.Target], a) {
				out.Orphaned[l.Target] = append(out.Orphaned[l.Target], a)
			}
		}
	}
	slices.Sort(out.Reissue)
	return out
}

// retireHeldTokens retires the tokens that the leaving cluster name held,
// once per removal: the orphaned ones are revoked now (their binding
// Secrets deleted), then, in one transaction, the stored credentials of
// every cluster it read are dropped (the federation step of this apply
// mints their successors and writes them first; revokeSuperseded revokes
// the old ones after the grace) and the removal is marked done. It
// returns what it did for the removal's detail; an error leaves the
// removal pending.
func (h *Hub) retireHeldTokens(ctx context.Context, was, now *plan, name string, leaving map[string]spec.Cluster, conns map[string]*kube.Cluster) (string, error) {
	var done bool
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		marks := map[string]bool{}
		_, err := tx.Value(heldTokensRetiredKey, &marks)
		done = marks[name]
		return err
	})
	if err != nil || done {
		return "", err
	}
	reads := readsOf(was, now, name, leaving)
	var revoked []string
	for _, target := range slices.Sorted(maps.Keys(reads.Orphaned)) {
		kc := conns[target]
		if kc == nil {
			return "", fmt.Errorf("%s: revoke the reader tokens %s held: not connected", target, name)
		}
		for _, a := range reads.Orphaned[target] {
			rs, err := federation.RevokeAll(ctx, kc, a)
			if err != nil {
				return "", err
			}
			for _, r := range rs {
				revoked = append(revoked, target+":"+r.Binding)
			}
		}
	}
	dropped := map[string]bool{}
	for _, c := range reads.Reissue {
		dropped[c] = true
	}
	for c := range reads.Orphaned {
		dropped[c] = true
	}
	var unbound []string
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		unbound = nil
		var creds []federation.Credential
		data, ok, err := tx.Secret(credentialsSecret)
		if err != nil {
			return err
		}
		if ok {
			if err := json.Unmarshal(data, &creds); err != nil {
				return err
			}
		}
		kept := creds[:0]
		for _, c := range creds {
			if !dropped[c.Cluster] {
				kept = append(kept, c)
				continue
			}
			if c.Binding == "" && !c.Legacy {
				unbound = append(unbound, c.Key())
			}
		}
		if data, err = json.Marshal(kept); err != nil {
			return err
		}
		if err := tx.PutSecret(credentialsSecret, data); err != nil {
			return err
		}
		marks := map[string]bool{}
		if _, err := tx.Value(heldTokensRetiredKey, &marks); err != nil {
			return err
		}
		marks[name] = true
		return tx.PutValue(heldTokensRetiredKey, marks)
	})
	if err != nil {
		return "", fmt.Errorf("state: drop the credentials %s held: %w", name, err)
	}
	var parts []string
	if len(reads.Reissue) > 0 {
		what := "re-issued (old ones revoked after the grace)"
		if now.Federation.Token.Legacy {
			// A legacy token secret is reused, not replaced.
			what = "kept: legacy token secrets are not replaced (federation rotate refuses them too)"
		}
		parts = append(parts, fmt.Sprintf("reader tokens it held for %s %s", strings.Join(reads.Reissue, ", "), what))
	}
	if len(revoked) > 0 {
		parts = append(parts, fmt.Sprintf("%d token(s) nobody else reads with revoked (%s)", len(revoked), strings.Join(revoked, ", ")))
	}
	if len(unbound) > 0 {
		// Minted before flotilla bound them: revocable only with the account.
		parts = append(parts, fmt.Sprintf("unbound token(s) %s live until they expire", strings.Join(unbound, ", ")))
	}
	return strings.Join(parts, ", "), nil
}

// clearHeldTokenMarks forgets the marks of clusters no longer pending (their
// removal done, or the spec names them again); called in the transaction
// that records that.
func clearHeldTokenMarks(tx *state.Tx, pending map[string]spec.Cluster) error {
	marks := map[string]bool{}
	ok, err := tx.Value(heldTokensRetiredKey, &marks)
	if err != nil || !ok {
		return err
	}
	for n := range marks {
		if _, still := pending[n]; !still {
			delete(marks, n)
		}
	}
	if len(marks) == 0 {
		return tx.DeleteValue(heldTokensRetiredKey)
	}
	return tx.PutValue(heldTokensRetiredKey, marks)
}
