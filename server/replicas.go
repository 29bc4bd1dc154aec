package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotillamesh/flotilla/server/ring"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// fenceRetry is how soon a replica that the ring names for a cluster but
// that finds its fence still held (by a dead owner's lease, say) tries again.
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
			Name: "flotilla_ring_owned_clusters", Help: "Member clusters the ring gives this replica to reconcile (each cluster has one owner).",
		}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_ring_members", Help: "Hub replicas this replica knows, by gossip state.",
		}, []string{"state"}),
		reconcileByName: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_reconcile_cluster_seconds", Help: "Time the last reconcile spent on each cluster (first step start to last step end).",
		}, []string{"cluster"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_reconcile_skipped_total", Help: "Reconcile turns this replica left to another: ring (the ring gives it no cluster) or fence (per owned cluster whose etcd fence another pass held).",
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

// reconcileKeys are the ring's keys: the member clusters of the stored
// spec and those still leaving it (a removal is its cluster's work).
func (h *Hub) reconcileKeys(ctx context.Context) ([]string, error) {
	m, err := h.StoredMesh(ctx)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, c := range m.Spec.Clusters {
		keys = append(keys, c.Name)
	}
	pending := map[string]spec.Cluster{}
	err = h.Store.View(ctx, func(tx *state.Tx) error {
		_, err := tx.Value(pendingRemovalsKey, &pending)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("state: read pending removals: %w", err)
	}
	for n := range pending {
		if !slices.Contains(keys, n) {
			keys = append(keys, n)
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// owned are the keys the ring gives this replica: all of them without a
// ring (a single hub).
func (s *Server) owned(keys []string) []string {
	r := s.opts.Ring
	if r == nil {
		return keys
	}
	return ring.Assign(keys, r.Live())[r.Name()]
}

// observeReplica refreshes the ring gauges (owned: the clusters the ring
// gives this replica) and the per-cluster reconcile times of journal entry
// id (0: none).
func (s *Server) observeReplica(ctx context.Context, id uint64, owned []string) {
	m := s.replica
	if r := s.opts.Ring; r != nil {
		m.members.Reset()
		for _, mb := range r.Members() {
			m.members.WithLabelValues(mb.State).Inc()
		}
	}
	m.owned.Set(float64(len(owned)))
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
	// Clusters are the member clusters the ring gives this replica to
	// reconcile (none once it is gone).
	Clusters []string `json:"clusters"`
}

// Members is the answer of GET /api/v1/members.
type Members struct {
	// Self is the replica that answered.
	Self string `json:"self"`
	// State is "bbolt" or "etcd"; StateReachable is false when this
	// replica cannot reach a majority of etcd.
	State          string `json:"state"`
	StateReachable bool   `json:"stateReachable"`
	StateError     string `json:"stateError,omitempty"`
	// Owners maps each member cluster to the replica that reconciles it,
	// as the answering replica's ring sees the live members.
	Owners  map[string]string `json:"owners"`
	Members []MemberInfo      `json:"members"`
}

// Members lists the replicas this one knows, their health and the clusters
// each reconciles. A hub without a ring is a single member.
func (s *Server) Members(ctx context.Context) (*Members, error) {
	clusters, err := s.hub.reconcileKeys(ctx)
	if err != nil && !errors.Is(err, errNoSpec) {
		return nil, err
	}
	out := &Members{State: s.hub.Store.Backend(), StateReachable: true, Owners: map[string]string{}}
	if err := s.hub.Store.Ping(ctx); err != nil {
		out.StateReachable, out.StateError = false, err.Error()
	}
	r := s.opts.Ring
	if r == nil {
		out.Self = "hub"
		for _, c := range clusters {
			out.Owners[c] = "hub"
		}
		out.Members = []MemberInfo{{Member: ring.Member{Name: "hub", API: s.URL(), State: "alive", IsSelf: true}, Clusters: append([]string{}, clusters...)}}
		return out, nil
	}
	out.Self = r.Name()
	assigned := ring.Assign(clusters, r.Live())
	for mb, cs := range assigned {
		for _, c := range cs {
			out.Owners[c] = mb
		}
	}
	for _, mb := range r.Members() {
		mi := MemberInfo{Member: mb, Clusters: []string{}}
		if cs, ok := assigned[mb.Name]; ok {
			mi.Clusters = cs
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
