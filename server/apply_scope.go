// The scope of an apply: a reconcile pass over some member clusters (a
// replica's share of the ring), fenced per cluster, beside the apply of a
// spec change, which holds every cluster.
//
// A cluster's work is the writes into it: its cacerts and intermediate
// (built-in PKI) or its cert-manager objects; its namespaces, gateways and
// Istio resources; its reader account and the token minted there; the
// remote secrets it holds (built from the stored credentials of the
// clusters it reads, which their own passes renew); and, once it has left
// the spec, its removal (which also deletes the secrets that read it
// elsewhere, drops the stored credentials it held so that their clusters'
// passes re-issue them, and revokes the tokens of clusters nobody else
// reads). Other clusters are otherwise only read (gateway addresses, API
// server endpoints). Mesh-wide state is written only in ways that
// commute: the root once (InitCA refuses a second), per-cluster records,
// and credentials merged inside one transaction.

package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// reconcileFenceTTL is the lease of a cluster's reconcile fence, in
// seconds: how long a replica that died (or lost etcd) keeps the others
// from its clusters.
const reconcileFenceTTL = 10

// fenceName is the lock that one pass at a time holds on cluster.
func fenceName(cluster string) string { return "reconcile/" + cluster }

// errFenceLost ends a scoped pass whose fence etcd no longer vouches for:
// another replica may be working on the cluster by now.
var errFenceLost = errors.New("reconcile fence lost")

// FencedError: every cluster of a scoped apply is fenced by another pass.
type FencedError struct{ Clusters []string }

func (e *FencedError) Error() string {
	return fmt.Sprintf("clusters %v: another pass holds their reconcile fences", e.Clusters)
}

func inScope(scope []string, cluster string) bool {
	return len(scope) == 0 || slices.Contains(scope, cluster)
}

// fenceClusters takes the reconcile fence of every cluster it can without
// waiting and returns the clusters it holds, sorted, and a context that
// ends when any of those fences is lost. None held is a *FencedError.
func (h *Hub) fenceClusters(ctx context.Context, clusters []string) (context.Context, func(), []string, error) {
	var held []string
	var releases []func()
	releaseAll := func() {
		for _, r := range releases {
			r()
		}
	}
	fctx, cancel := context.WithCancelCause(ctx)
	for _, c := range slices.Sorted(slices.Values(clusters)) {
		if slices.Contains(held, c) {
			continue
		}
		f, ok, err := h.Store.TryFence(ctx, fenceName(c), reconcileFenceTTL)
		if err != nil {
			releaseAll()
			cancel(nil)
			return ctx, nil, nil, fmt.Errorf("%s: reconcile fence: %w", c, err)
		}
		if !ok {
			continue
		}
		held, releases = append(held, c), append(releases, f.Release)
		go func() {
			select {
			case <-f.Lost:
				cancel(fmt.Errorf("%s: %w", c, errFenceLost))
			case <-fctx.Done():
			}
		}()
	}
	if len(held) == 0 {
		cancel(nil)
		return ctx, nil, nil, &FencedError{Clusters: slices.Sorted(slices.Values(clusters))}
	}
	return fctx, func() { cancel(nil); releaseAll() }, held, nil
}

// lockClusters waits for the reconcile fence of every cluster a spec change
// touches (those of the new spec, of the last one, and those still leaving)
// and holds them all. Passes only ever try a fence, so waiting here cannot
// deadlock; the apply lock, taken first, keeps spec changes in line.
func (h *Hub) lockClusters(ctx context.Context, prev *spec.Mesh, p *plan) (func(), error) {
	names := map[string]bool{}
	for _, c := range p.Clusters {
		names[c.Name] = true
	}
	if prev != nil {
		for _, c := range prev.Spec.Clusters {
			names[c.Name] = true
		}
	}
	pending := map[string]spec.Cluster{}
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		_, err := tx.Value(pendingRemovalsKey, &pending)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("state: read pending removals: %w", err)
	}
	for n := range pending {
		names[n] = true
	}
	var unlocks []func()
	unlockAll := func() {
		for _, u := range slices.Backward(unlocks) {
			u()
		}
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		u, err := h.Store.Lock(ctx, fenceName(n))
		if err != nil {
			unlockAll()
			return nil, fmt.Errorf("%s: wait for its reconcile fence: %w", n, err)
		}
		unlocks = append(unlocks, u)
	}
	return unlockAll, nil
}

// scopeRemovals keeps the leaving clusters in scope.
func scopeRemovals(leaving map[string]spec.Cluster, scope []string) map[string]spec.Cluster {
	out := map[string]spec.Cluster{}
	for n, c := range leaving {
		if inScope(scope, n) {
			out[n] = c
		}
	}
	return out
}
