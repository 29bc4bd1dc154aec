package server

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// loop reconciles at start and then every interval after the previous
// reconcile ended, until ctx is done. In cert-manager mode it keeps the
// hub's issuer and the cacerts projection watching between reconciles.
func (s *Server) loop(ctx context.Context) {
	watch := newCMWatch(s)
	defer watch.stop()
	for ctx.Err() == nil {
		// Taken before the pass, so that a change during it is not missed.
		changed := s.ringChanged()
		res := s.Reconcile(ctx)
		watch.sync(ctx)
		wait := s.opts.Interval
		if len(res.Fenced) > 0 {
			wait = min(wait, fenceRetry)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-changed:
			// A replica came or went: the mesh may have just become ours.
			t.Stop()
		}
	}
}

// ReconcileResult is what one reconcile did.
type ReconcileResult struct {
	// Idle: no mesh has been applied yet, so there was nothing to do.
	Idle bool
	// Skipped names why this replica reconciled nothing: "ring" (the ring
	// gives it no cluster) or "fence" (other passes hold the etcd fences
	// of every cluster it owns).
	Skipped string
	// Owned are the clusters the ring gives this replica; Fenced those of
	// them another pass held, which this one left alone.
	Owned, Fenced []string
	Report        *ApplyReport
	Err           error
}

// Reconcile applies the stored spec once to the clusters this replica owns
// on the ring (all of them without a ring), the way the loop does: it
// repairs drift (a deleted cacerts, remote secret or network label), renews
// reader tokens in federation's renewal window and intermediates with less
// than a fifth of their lifetime left, then records metrics. Each cluster
// is fenced in etcd for the pass, so two replicas that both believe they
// own it (a partition) take turns. wait bounds only the wait for an apply
// in progress.
func (s *Server) Reconcile(wait context.Context) ReconcileResult {
	keys, err := s.hub.reconcileKeys(wait)
	if errors.Is(err, errNoSpec) {
		s.log.Debug("reconcile: no mesh has been applied yet")
		s.setLast(nil)
		s.observeReplica(wait, 0, nil)
		return ReconcileResult{Idle: true}
	}
	if err != nil {
		s.metrics.reconcileErrors.Inc()
		s.setLast(err)
		s.log.Error("reconcile: clusters", "error", err.Error())
		return ReconcileResult{Err: err}
	}
	owned := s.owned(keys)
	s.observeReplica(wait, 0, owned)
	if len(owned) == 0 {
		s.replica.skipped.WithLabelValues("ring").Inc()
		s.log.Debug("reconcile: the ring gives this replica no cluster")
		return ReconcileResult{Skipped: "ring"}
	}
	rep, err := s.apply(wait, nil, ApplyOptions{Clusters: owned}, "reconcile")
	if fe := (*FencedError)(nil); errors.As(err, &fe) {
		s.replica.skipped.WithLabelValues("fence").Add(float64(len(owned)))
		s.log.Debug("reconcile: other passes hold the fences", "clusters", owned)
		return ReconcileResult{Skipped: "fence", Owned: owned, Fenced: owned}
	}
	if errors.Is(err, errNoSpec) {
		s.setLast(nil)
		return ReconcileResult{Idle: true}
	}
	if err != nil && (errors.Is(err, errShuttingDown) || wait.Err() != nil) {
		return ReconcileResult{Err: err} // never ran: not a reconcile
	}
	res := ReconcileResult{Owned: owned, Report: rep}
	if rep != nil {
		for _, c := range owned {
			if !slices.Contains(rep.Clusters, c) {
				res.Fenced = append(res.Fenced, c)
			}
		}
		if len(res.Fenced) > 0 {
			s.replica.skipped.WithLabelValues("fence").Add(float64(len(res.Fenced)))
		}
	}
	s.metrics.reconciles.Inc()
	s.metrics.lastReconcile.Set(float64(s.hub.now().Unix()))
	if err != nil {
		s.metrics.reconcileErrors.Inc()
		s.setLast(err)
		s.log.Error("reconcile failed", "error", err.Error())
		res.Err = err
		return res
	}
	s.setLast(nil)
	s.metrics.reconcileChanges.Add(float64(rep.Changes()))
	attrs := []any{"id", rep.ID, "clusters", rep.Clusters, "changes", rep.Changes(), "duration", rep.Duration.String()}
	if ferr := rep.Err(); ferr != nil {
		s.metrics.reconcileErrors.Inc()
		s.log.Warn("reconciled with failures", append(attrs, "failed", len(rep.Failed()), "error", ferr.Error())...)
	} else {
		s.log.Info("reconciled", attrs...)
	}
	s.observe()
	s.observeReplica(wait, rep.ID, owned)
	return res
}

func (s *Server) setLast(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
}

// observe refreshes the per-cluster gauges from a status of the stored spec.
func (s *Server) observe() {
	ctx, cancel := context.WithTimeout(s.work, time.Minute)
	defer cancel()
	st, err := s.hub.Status(ctx, nil)
	if err != nil {
		s.log.Warn("reconcile: status for metrics", "error", err.Error())
		return
	}
	// Root expiries come from the trust bundle: a cluster's root is known
	// by its fingerprint, and a root outside the bundle is drift anyway.
	rootEnd := map[string]time.Time{}
	if _, bundle, _, err := s.hub.loadCA(ctx); err == nil && bundle != nil {
		for _, r := range bundle.Roots {
			rootEnd[pki.Fingerprint(r)] = r.NotAfter
		}
	}
	m := s.metrics
	m.clusterHealthy.Reset()
	m.intermediateEnd.Reset()
	m.rootEnd.Reset()
	builtin := true
	if mesh, err := s.hub.StoredMesh(ctx); err == nil {
		builtin = mesh.Spec.PKI.Mode == spec.PKIBuiltin || mesh.Spec.PKI.Mode == ""
	}
	for _, c := range st.Clusters {
		m.clusterHealthy.WithLabelValues(c.Name).Set(boolGauge(clusterHealthy(c, builtin)))
		if !c.IntermediateNotAfter.IsZero() {
			m.intermediateEnd.WithLabelValues(c.Name).Set(float64(c.IntermediateNotAfter.Unix()))
		}
		if end, ok := rootEnd[c.RootFingerprint]; ok {
			m.rootEnd.WithLabelValues(c.Name).Set(float64(end.Unix()))
		}
	}
}

// clusterHealthy: reachable, no drift, and (built-in PKI) a valid chain,
// and every remote secret it holds authenticates.
func clusterHealthy(c ClusterStatus, builtinPKI bool) bool {
	if !c.Reachable || len(c.Drift) > 0 || (builtinPKI && !c.IntermediateChainValid) {
		return false
	}
	for _, rs := range c.RemoteSecrets {
		if !rs.Healthy {
			return false
		}
	}
	return true
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
