package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// ApplyOptions change how Apply converges.
type ApplyOptions struct {
	// DryRun validates every write on the API servers and persists nothing,
	// neither in the clusters nor in the state.
	DryRun bool
	// CACertsPolicy says what to do with a cacerts flotilla did not write.
	CACertsPolicy pki.ConflictPolicy
	// Source is where the apply comes from, for the journal: cli (when
	// empty), api or reconcile.
	Source string
	// Clusters, when set, scopes the apply to the stored spec's work in
	// these member clusters (a replica's share of the ring), as
	// apply_scope.go defines it. A scoped apply takes each cluster's reconcile fence
	// instead of the apply lock, and skips the clusters whose fence another
	// pass holds.
	Clusters []string
}

// Step is the outcome of one step of an apply, in one cluster or mesh-wide.
type Step struct {
	Cluster string `json:"cluster,omitempty"`
	Step    string `json:"step"`
	// Action is what happened: created, updated, unchanged, issued, failed...
	Action string `json:"action"`
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

// ApplyReport is the outcome of one apply.
type ApplyReport struct {
	// ID is the apply's journal entry (0 for dry runs, which are not journaled).
	ID       uint64 `json:"id,omitempty"`
	DryRun   bool   `json:"dryRun,omitempty"`
	SpecHash string `json:"specHash"`
	// Clusters are the clusters a scoped apply covered (those whose fence
	// it held); empty for an apply of the whole mesh.
	Clusters []string      `json:"clusters,omitempty"`
	Duration time.Duration `json:"durationNanos"`
	Steps    []Step        `json:"steps"`
}

// Failed returns the steps that failed.
func (r *ApplyReport) Failed() []Step {
	var out []Step
	for _, s := range r.Steps {
		if s.Error != "" {
			out = append(out, s)
		}
	}
	return out
}

// Err summarizes the failures, naming each cluster and step; nil when none failed.
func (r *ApplyReport) Err() error {
	failed := r.Failed()
	if len(failed) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d step(s) failed:", len(failed))
	for _, s := range failed {
		where := s.Cluster
		if where == "" {
			where = "mesh"
		}
		fmt.Fprintf(&b, "\n  %s: %s: %s", where, s.Step, s.Error)
	}
	return errors.New(b.String())
}

// Changes counts the steps that changed something.
func (r *ApplyReport) Changes() int {
	n := 0
	for _, s := range r.Steps {
		switch s.Action {
		case "unchanged", "skipped", "none", "validated", "":
		default:
			if s.Error == "" {
				n++
			}
		}
	}
	return n
}

type recorder struct {
	h      *Hub
	id     uint64
	mu     sync.Mutex
	steps  []Step
	dryRun bool
}

func (r *recorder) add(ctx context.Context, s Step) {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
	line := s.Step + ": " + s.Action
	if s.Detail != "" {
		line += " (" + s.Detail + ")"
	}
	if s.Error != "" {
		line += ": " + s.Error
	}
	r.h.progressf(s.Cluster, "%s", line)
	if r.id == 0 {
		return
	}
	result := s.Action
	if s.Error != "" {
		result = "failed"
	}
	// The journal is best effort: a failed journal write must not fail the apply.
	_ = r.h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.AddApplyStep(r.id, state.StepRecord{Cluster: s.Cluster, Step: s.Step, Result: result, Error: s.Error, End: r.h.now()})
	})
	if r.h.Hook != nil {
		r.h.Hook("journal: " + s.Cluster + " " + s.Step + ": " + result)
	}
}

func (r *recorder) fail(ctx context.Context, cluster, step string, err error) {
	r.add(ctx, Step{Cluster: cluster, Step: step, Action: "failed", Error: err.Error()})
}

// Apply converges every cluster to m: the mesh's root and each cluster's
// intermediate in cacerts (built-in PKI), namespaces, gateways and Istio
// resources, then the reader accounts and remote secrets. Clusters are worked
// on in parallel; a failure in one cluster stops only the steps that depend on
// it, and the report names every failure. The root is never regenerated once
// the state holds one. A killed apply leaves the state consistent and the
// next apply converges. With o.Clusters it is a reconcile pass over those
// clusters of the stored spec alone (apply_scope.go).
func (h *Hub) Apply(ctx context.Context, m *spec.Mesh, o ApplyOptions) (*ApplyReport, error) {
	start := h.now()
	scoped := len(o.Clusters) > 0
	if scoped && m != nil {
		return nil, errors.New("a scoped apply reconciles the stored spec; give no spec")
	}
	if scoped && !o.DryRun {
		// The fences before the spec: a spec change holds every fence, so
		// the spec read under them is the one its clusters were given.
		var release func()
		var err error
		ctx, release, o.Clusters, err = h.fenceClusters(ctx, o.Clusters)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	m, err := h.meshOrStored(ctx, m)
	if err != nil {
		return nil, err
	}
	p, err := compile(m)
	if err != nil {
		return nil, err
	}
	if err := spec.CheckInputs(ctx, m, h.Kubeconfig); err != nil {
		return nil, err
	}
	if h.Connect == nil {
		if err := h.Inputs.admitKubeconfigs(m, h.Kubeconfig); err != nil {
			return nil, err
		}
	}
	if err := h.checkRootFiles(ctx, p.PKI.Root); err != nil {
		return nil, err
	}
	if !o.DryRun && !scoped {
		// Hubs that share a state (replicas on etcd) take turns: an apply
		// starts from what the previous one recorded, and the root is
		// generated once.
		unlock, err := h.Store.Lock(ctx, "apply")
		if err != nil {
			return nil, fmt.Errorf("state: apply lock: %w", err)
		}
		defer unlock()
	}
	rep := &ApplyReport{DryRun: o.DryRun, SpecHash: p.Hash, Clusters: o.Clusters}
	rec := &recorder{h: h, dryRun: o.DryRun}
	prev, err := h.StoredMesh(ctx)
	if err != nil && !errors.Is(err, errNoSpec) {
		return nil, fmt.Errorf("state: last applied spec: %w", err)
	}
	var leaving map[string]spec.Cluster
	if !o.DryRun && !scoped {
		// Reconcile passes of any replica finish before the spec changes,
		// and none starts until the change is applied: no cluster is
		// worked on with two specs at once.
		unlock, err := h.lockClusters(ctx, prev, p)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	if o.DryRun || scoped {
		err = h.Store.View(ctx, func(tx *state.Tx) error {
			leaving, err = pendingRemovals(tx, prev, p.Clusters)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("state: pending removals: %w", err)
		}
		if scoped {
			leaving = scopeRemovals(leaving, o.Clusters)
		}
	}
	if !o.DryRun {
		// The new spec and the clusters it drops are recorded together: a
		// removal that fails, or is killed, is retried by the next apply
		// although the spec no longer names the cluster. A scoped pass
		// changes neither; its entry names the clusters it covers.
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			if !scoped {
				if leaving, err = pendingRemovals(tx, prev, p.Clusters); err != nil {
					return err
				}
				if err := putPendingRemovals(tx, leaving); err != nil {
					return err
				}
				if err := tx.PutSpec(m.Canonical(), p.Hash); err != nil {
					return err
				}
			}
			id, err := tx.AppendApply(state.ApplyRecord{Start: start, SpecHash: p.Hash, Kind: journalKind(o.Source), Source: cmp.Or(o.Source, "cli"), Clusters: o.Clusters})
			rec.id = id
			return err
		})
		rep.ID = rec.id
	}
	if err != nil {
		return nil, fmt.Errorf("state: record apply: %w", err)
	}

	conns, connErrs := h.connect(p.Clusters, o.DryRun)
	for name, err := range connErrs {
		if inScope(o.Clusters, name) {
			rec.fail(ctx, name, "connect", err)
		}
	}
	h.removeClusters(ctx, p, leaving, o, rec)

	var wg sync.WaitGroup
	// PKI runs beside gateways and federation; only each cluster's Istio
	// resource waits for its cacerts.
	var gated []string
	for name := range conns {
		if inScope(o.Clusters, name) {
			gated = append(gated, name)
		}
	}
	gate := newCACertsGate(gated)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer gate.doneAll(errors.New("the PKI step ended without it"))
		h.applyPKI(ctx, p, conns, o, rec, gate)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Remote secrets after the namespaces exist: where an istiod serves
		// clusters that run none, before any istiod starts
		// (deploy.Options.BeforeControlPlanes), else (or when the control
		// planes stop before that point) after the control planes.
		federated := false
		var early func(context.Context) error
		if federatesFirst(p.Layout) {
			early = func(ctx context.Context) error {
				federated = true
				h.applyFederation(ctx, p, conns, o, rec)
				return nil
			}
		}
		h.applyControlPlanes(ctx, p, conns, o, rec, gate, early)
		if !federated {
			h.applyFederation(ctx, p, conns, o, rec)
		}
	}()
	wg.Wait()

	rep.Steps = rec.steps
	sort.SliceStable(rep.Steps, func(i, j int) bool { return rep.Steps[i].Cluster < rep.Steps[j].Cluster })
	rep.Duration = h.now().Sub(start)
	if rec.id != 0 {
		result := "succeeded"
		if len(rep.Failed()) > 0 {
			result = fmt.Sprintf("failed: %d step(s)", len(rep.Failed()))
		}
		fctx := ctx
		if cause := context.Cause(ctx); errors.Is(cause, errFenceLost) {
			// The pass stopped itself; its entry says why rather than
			// looking killed.
			result += ": " + cause.Error()
			var cancel context.CancelFunc
			fctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
		}
		if err := h.Store.Update(fctx, func(tx *state.Tx) error { return tx.FinishApply(rec.id, h.now(), result) }); err != nil {
			return rep, fmt.Errorf("state: finish apply: %w", err)
		}
	}
	return rep, nil
}

// federatesFirst says whether remote secrets and istio-kubeconfig go in
// before any Sail resource: when some cluster runs no istiod of its own
// (a remote, a data-plane cluster). An external istiod reads its
// istio-kubeconfig once, at start, and a serving istiod patches a remote's
// injection webhook only once it reads the remote, which the remote's
// gateway injection waits for. In multi-primary each istiod picks remote
// secrets up as they come, and a secret that reads its target through the
// target's east-west gateway (apiServerAccess: gateway) is probed through
// it, which answers only once that cluster's istiod configured the gateway:
// there they go in after the control planes.
func federatesFirst(l *deploy.Layout) bool {
	for _, m := range l.Members() {
		if m.Role == deploy.RoleRemote || m.Role == deploy.RoleDataPlane {
			return true
		}
	}
	return false
}
