package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// ReaderRotationOptions say which reader credentials to rotate.
type ReaderRotationOptions struct {
	// Cluster rotates only the credential that reads this cluster; "" all.
	Cluster string `json:"cluster,omitempty"`
	// Settle is how long the new remote secrets stand before the reading
	// istiods' views are trusted to reflect them (0: DefaultRotationSettle).
	Settle time.Duration `json:"settleNanos,omitempty"`
}

// DefaultRotationSettle leaves istiod time to see the rewritten remote
// secret (a watch event: milliseconds) before its clusterz is read: a
// clusterz read earlier still shows the old cluster synced.
const DefaultRotationSettle = 2 * time.Second

// rotationWait bounds each wait of a rotation: for istiod to sync the
// cluster with the new token, and for an old token to be refused.
const rotationWait = time.Minute

// ReaderRotation is what `flotilla federation rotate` did.
type ReaderRotation struct {
	Readers []RotatedReader `json:"readers"`
	// Apply is the rotation's journal entry and steps.
	Apply *ApplyReport `json:"apply"`
}

// RotatedReader is the rotation of one read cluster's reader credential.
type RotatedReader struct {
	Cluster string   `json:"cluster"`
	Account string   `json:"account"`
	HeldBy  []string `json:"heldBy"`
	// Binding is the secret the new token is bound to.
	Binding   string    `json:"binding,omitempty"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	RenewAt   time.Time `json:"renewAt,omitzero"`
	// Revoked are the binding secrets deleted, each revoking a token.
	Revoked []string `json:"revoked"`
	// IstiodSyncedMillis is how long after the new secrets were written
	// every reading istiod reported the cluster synced again.
	IstiodSyncedMillis int64 `json:"istiodSyncedMillis"`
	// OldTokenRefused: TokenReview refuses the replaced token, checked after
	// its revocation; RefusedMillis after the revocation.
	OldTokenRefused bool   `json:"oldTokenRefused"`
	RefusedMillis   int64  `json:"refusedMillis"`
	Error           string `json:"error,omitempty"`
}

// Err joins the failures of the rotation, nil when every credential was
// rotated and every replaced token is refused.
func (r *ReaderRotation) Err() error {
	var errs []error
	for _, rr := range r.Readers {
		if rr.Error != "" {
			errs = append(errs, fmt.Errorf("%s: %s", rr.Cluster, rr.Error))
		}
	}
	if r.Apply != nil {
		errs = append(errs, r.Apply.Err())
	}
	return errors.Join(errs...)
}

// RotateReaders rotates reader credentials on demand (a suspected leak): a
// new token for every read cluster's reader (or o.Cluster's), written into
// every remote secret that reads it; then, once the reading istiods report
// the cluster synced with it, the replaced tokens are revoked and each is
// checked to be refused. A cluster whose secrets could not all be written
// keeps its old token valid, and says so.
func (h *Hub) RotateReaders(ctx context.Context, m *spec.Mesh, o ReaderRotationOptions) (*ReaderRotation, error) {
	start := h.now()
	m, err := h.meshOrStored(ctx, m)
	if err != nil {
		return nil, err
	}
	p, err := compile(m)
	if err != nil {
		return nil, err
	}
	if p.Federation.Token.Legacy {
		return nil, errors.New("reader rotation: the mesh uses long-lived token secrets (federation.legacyTokenSecret), which cannot be replaced without a gap: apply with bound tokens first")
	}
	if err := spec.CheckInputs(ctx, m, h.Kubeconfig); err != nil {
		return nil, err
	}
	if h.Connect == nil {
		if err := h.Inputs.admitKubeconfigs(m, h.Kubeconfig); err != nil {
			return nil, err
		}
	}
	plan := federation.NewPlan(p.Layout)
	rotate := map[string]bool{}
	for _, t := range plan.Targets() {
		if o.Cluster == "" || t.Target == o.Cluster {
			rotate[t.Target] = true
		}
	}
	if o.Cluster != "" && !rotate[o.Cluster] {
		if _, err := p.clusterOrError(o.Cluster); err != nil {
			return nil, fmt.Errorf("reader rotation: %w", err)
		}
		return nil, fmt.Errorf("reader rotation: cluster %s: no cluster reads it, so it has no reader credential", o.Cluster)
	}
	settle := o.Settle
	if settle <= 0 {
		settle = DefaultRotationSettle
	}

	unlock, err := h.Store.Lock(ctx, "apply")
	if err != nil {
		return nil, fmt.Errorf("state: apply lock: %w", err)
	}
	defer unlock()
	rec := &recorder{h: h}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		id, err := tx.AppendApply(state.ApplyRecord{Start: start, SpecHash: p.Hash, Kind: state.KindApply, Source: "rotation"})
		rec.id = id
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("state: record rotation: %w", err)
	}
	out := &ReaderRotation{Readers: []RotatedReader{}}
	defer func() {
		rep := &ApplyReport{ID: rec.id, SpecHash: p.Hash, Steps: rec.steps, Duration: h.now().Sub(start)}
		sort.SliceStable(rep.Steps, func(i, j int) bool { return rep.Steps[i].Cluster < rep.Steps[j].Cluster })
		out.Apply = rep
		result := "succeeded"
		if out.Err() != nil {
			result = "failed"
		}
		_ = h.Store.Update(ctx, func(tx *state.Tx) error { return tx.FinishApply(rec.id, h.now(), result) })
	}()

	known, err := h.loadCredentials(ctx)
	if err != nil {
		return out, fmt.Errorf("state: credentials: %w", err)
	}
	old := map[string]federation.Credential{}
	for _, c := range known {
		old[c.Key()] = c
	}
	conns, connErrs := h.connect(p.Clusters, false)
	for name, err := range connErrs {
		rec.fail(ctx, name, "connect", err)
	}
	res := h.federate(ctx, p, conns, ApplyOptions{Source: "rotation"}, rotate, rec)
	if res == nil {
		return out, errors.New("reader rotation: the new credentials could not be issued or stored (see the steps)")
	}
	written := h.now()
	creds := map[string]federation.Credential{}
	for _, c := range res.Credentials {
		creds[c.Key()] = c
	}
	for _, t := range res.Targets {
		if !rotate[t.Cluster] {
			continue
		}
		key := federation.Credential{Cluster: t.Cluster, Namespace: t.Account.Namespace, Account: t.Account.Name}.Key()
		cur := creds[key]
		rr := RotatedReader{Cluster: t.Cluster, Account: t.Account.String(), HeldBy: readersOfTarget(res.Plan, t.Cluster), Revoked: []string{},
			Binding: cur.Binding, ExpiresAt: cur.Expiry, RenewAt: p.Federation.Token.RenewAt(cur.Expiry)}
		r := &rr
		switch {
		case t.Err != nil:
			r.Error = "no new token: " + t.Err.Error()
		case t.Renewed == federation.ReasonNone:
			r.Error = "no new token was issued"
		case !linksWritten(res, t.Cluster):
			r.Error = "not every remote secret that reads it was written: the old token stays valid until they are (run flotilla federation rotate again)"
		}
		out.Readers = append(out.Readers, rr)
	}
	// Each read cluster's wait and revocation runs beside the others'.
	var wg sync.WaitGroup
	for i := range out.Readers {
		r := &out.Readers[i]
		if r.Error != "" {
			continue
		}
		for _, t := range res.Targets {
			if t.Cluster != r.Cluster {
				continue
			}
			key := federation.Credential{Cluster: t.Cluster, Namespace: t.Account.Namespace, Account: t.Account.Name}.Key()
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.rotateRevoke(ctx, conns, t, creds[key], old[key], written, settle, r, rec)
			}()
		}
	}
	wg.Wait()
	return out, out.Err()
}

// rotateRevoke waits for the reading istiods to report t synced with the
// new secrets, revokes the tokens cur superseded, and checks that prev's
// token is refused.
func (h *Hub) rotateRevoke(ctx context.Context, conns map[string]*kube.Cluster, t federation.TargetResult, cur, prev federation.Credential,
	written time.Time, settle time.Duration, r *RotatedReader, rec *recorder) {
	step := "reader " + t.Account.String()
	kc := conns[t.Cluster]
	select {
	case <-ctx.Done():
		r.Error = ctx.Err().Error()
		return
	case <-time.After(settle):
	}
	var why string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, rotationWait, true, func(ctx context.Context) (bool, error) {
		why = istiodsNotSynced(ctx, conns, r.HeldBy, t.Cluster)
		return why == "", nil
	})
	if err != nil {
		r.Error = "old token kept: " + why
		rec.fail(ctx, t.Cluster, step, fmt.Errorf("%s: keep the replaced token of %s: %s", t.Cluster, t.Account, why))
		return
	}
	r.IstiodSyncedMillis = h.now().Sub(written).Milliseconds()
	rec.add(ctx, Step{Cluster: t.Cluster, Step: step, Action: "synced", Detail: fmt.Sprintf("every reading istiod reports %s synced %s after the new secrets", t.Cluster, time.Duration(r.IstiodSyncedMillis)*time.Millisecond)})
	revokedAt := h.now()
	revoked, err := federation.RevokeSuperseded(ctx, kc, t.Account, cur, 0, time.Now(), nil)
	for _, rv := range revoked {
		r.Revoked = append(r.Revoked, rv.Binding)
		rec.add(ctx, Step{Cluster: t.Cluster, Step: step, Action: "revoked", Detail: "binding secret " + t.Account.Namespace + "/" + rv.Binding + " deleted"})
	}
	if err != nil {
		r.Error = err.Error()
		rec.fail(ctx, t.Cluster, step, err)
		return
	}
	if prev.Token == "" || prev.Token == cur.Token {
		r.OldTokenRefused = true // nothing was held before
		return
	}
	// The API server caches a token's authentication (ten seconds in
	// kube-apiserver): a token used just before is refused only after that.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, rotationWait, true, func(ctx context.Context) (bool, error) {
		ok, err := federation.Accepted(ctx, kc, t.Account, prev.Token)
		return err == nil && !ok, nil
	})
	if err != nil {
		msg := "the replaced token is still accepted by TokenReview"
		if prev.Binding == "" {
			msg += " (it was minted unbound, before flotilla bound reader tokens: it lives until " + prev.Expiry.UTC().Format(time.RFC3339) + " unless " + t.Account.String() + " is deleted)"
		}
		r.Error = msg
		rec.fail(ctx, t.Cluster, step, fmt.Errorf("%s: %s", t.Cluster, msg))
		return
	}
	r.OldTokenRefused, r.RefusedMillis = true, h.now().Sub(revokedAt).Milliseconds()
	rec.add(ctx, Step{Cluster: t.Cluster, Step: step, Action: "refused", Detail: fmt.Sprintf("TokenReview refuses the replaced token %s after its revocation", time.Duration(r.RefusedMillis)*time.Millisecond)})
}
