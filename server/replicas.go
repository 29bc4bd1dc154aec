package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/state"
)

// reconcileKey is the ring key whose owner runs the reconcile pass, and the
// name of the etcd fence that pass holds. The pass applies the whole stored
// spec (the engine cannot yet apply a subset of clusters), so one replica
// reconciles the mesh at a time and owns all of its clusters.
const reconcileKey = "reconcile"

// reconcileFenceTTL is the lease of the reconcile fence, in seconds: how
// long a replica that died (or lost etcd) keeps the others waiting.
const reconcileFenceTTL = 10

// fenceRetry is how soon a replica that the ring names but that finds the
// fence still held (by a dead owner's lease, say) tries again.
const fenceRetry = 2 * time.Second

// replicaMetrics are the metrics of a hub replica that shares its state.
type replicaMetrics struct {
	owned           prometheus.Gauge
	members         *prometheus.GaugeVec
	reconcileByName *prometheus.GaugeVec
	skipped         *prometheus.CounterVec
}

func newReplicaMetrics(reg *prometheus.Registry, st *state.Store) *replicaMetrics {
	m := &replicaMetrics{
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_ring_owned_clusters", Help: "Member clusters this replica reconciles, as the ring assigns them.",
		}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_ring_members", Help: "Hub replicas this replica knows, by gossip state.",
		}, []string{"state"}),
		reconcileByName: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_reconcile_cluster_seconds", Help: "Time the last reconcile spent on each cluster (first step start to last step end).",
		}, []string{"cluster"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_reconcile_skipped_total", Help: "Reconcile turns this replica left to another: ring (another replica owns the mesh) or fence (the etcd fence is held).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.owned, m.members, m.reconcileByName, m.skipped,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_state_round_trips_total", Help: "Requests sent to the state's etcd cluster (0 on bbolt).",
		}, func() float64 { return float64(st.RoundTrips()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_state_lock_wait_seconds_total", Help: "Time spent waiting for the apply lock.",
		}, func() float64 { return st.LockWait().Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_state_lock_waits_total", Help: "Times the apply lock was taken.",
		}, func() float64 { return float64(st.LockWaits()) }),
	)
	return m
}

// reconcileTurn says whether this replica reconciles now and, if so, holds
// the fence until release. A single hub on bbolt always has the turn. skip
// names why not: another replica owns the mesh, or the fence is held.
func (s *Server) reconcileTurn(ctx context.Context) (release func(), skip string, err error) {
	if r := s.opts.Ring; r != nil {
		if owner := r.Owner(reconcileKey); owner != r.Name() {
			return nil, "ring", nil
		}
	}
	if s.opts.Ring == nil && s.hub.Store.Backend() != "etcd" {
		return func() {}, "", nil
	}
	// The ring is advice; the fence is what keeps two replicas (one cut off
	// from the others, say) from reconciling at once.
	f, ok, err := s.hub.Store.TryFence(ctx, reconcileKey, reconcileFenceTTL)
	if err != nil {
		return nil, "", err
	}
	if !ok {
		return nil, "fence", nil
	}
	return f.Release, "", nil
}

// observeReplica refreshes the ring gauges and the per-cluster reconcile
// times of journal entry id (0: none).
func (s *Server) observeReplica(ctx context.Context, id uint64, clusters []string) {
	m := s.replica
	if r := s.opts.Ring; r != nil {
		m.members.Reset()
		for _, mb := range r.Members() {
			m.members.WithLabelValues(mb.State).Inc()
		}
		owned := 0
		if r.Owns(reconcileKey) {
			owned = len(clusters)
		}
		m.owned.Set(float64(owned))
	} else {
		m.owned.Set(float64(len(clusters)))
	}
	if id == 0 {
		return
	}
	_ = s.hub.Store.View(ctx, func(tx *state.Tx) error {
		rec, ok, err := tx.ApplyRecord(id)
		if err != nil || !ok {
			return err
		}
		span := map[string][2]time.Time{}
		for _, st := range rec.Steps {
			if st.Cluster == "" || st.Start.IsZero() {
				continue
			}
			sp, seen := span[st.Cluster]
			if !seen || st.Start.Before(sp[0]) {
				sp[0] = st.Start
			}
			if st.End.After(sp[1]) {
				sp[1] = st.End
			}
			span[st.Cluster] = sp
		}
		for c, sp := range span {
			m.reconcileByName.WithLabelValues(c).Set(sp[1].Sub(sp[0]).Seconds())
		}
		return nil
	})
}

// ringChanged is closed at the next membership change (never without a ring).
func (s *Server) ringChanged() <-chan struct{} {
	if s.opts.Ring == nil {
		return nil
	}
	return s.opts.Ring.Changed()
}

// MemberInfo is one hub replica in GET /api/v1/members.
type MemberInfo struct {
	ring.Member
	// Clusters are the member clusters this replica reconciles.
	Clusters []string `json:"clusters"`
}

// Members is the answer of GET /api/v1/members.
type Members struct {
	// Self is the replica that answered.
	Self string `json:"self"`
	// State is "bbolt" or "etcd"; StateReachable is false when this
	// replica cannot reach a majority of etcd.
	State          string       `json:"state"`
	StateReachable bool         `json:"stateReachable"`
	StateError     string       `json:"stateError,omitempty"`
	Reconciler     string       `json:"reconciler"`
	Members        []MemberInfo `json:"members"`
}

// Members lists the replicas this one knows, their health and the clusters
// each reconciles. A hub without a ring is a single member.
func (s *Server) Members(ctx context.Context) (*Members, error) {
	var clusters []string
	if m, err := s.hub.StoredMesh(ctx); err == nil {
		for _, c := range m.Spec.Clusters {
			clusters = append(clusters, c.Name)
		}
		slices.Sort(clusters)
	} else if !errors.Is(err, errNoSpec) {
		return nil, err
	}
	out := &Members{State: s.hub.Store.Backend(), StateReachable: true}
	if err := s.hub.Store.Ping(ctx); err != nil {
		out.StateReachable, out.StateError = false, err.Error()
	}
	r := s.opts.Ring
	if r == nil {
		out.Self, out.Reconciler = "hub", "hub"
		out.Members = []MemberInfo{{Member: ring.Member{Name: "hub", API: s.URL(), State: "alive", IsSelf: true}, Clusters: clusters}}
		return out, nil
	}
	out.Self, out.Reconciler = r.Name(), r.Owner(reconcileKey)
	for _, mb := range r.Members() {
		mi := MemberInfo{Member: mb, Clusters: []string{}}
		if mb.Name == out.Reconciler {
			mi.Clusters = clusters
		}
		out.Members = append(out.Members, mi)
	}
	return out, nil
}

func (s *Server) handleMembers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.requestContext(r)
	defer cancel()
	ms, err := s.Members(ctx)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, ms)
}
