// The control-plane action of Apply: namespaces, gateways and the Istio
// resources of every cluster, in the order gateways.ApplyMesh needs.

package server

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// federate runs where gateways.ApplyMesh calls BeforeControlPlanes.
func (h *Hub) applyControlPlanes(ctx context.Context, p *plan, conns map[string]*kube.Cluster, o ApplyOptions, rec *recorder, gate *cacertsGate, federate func(context.Context) error) {
	if len(conns) != len(p.Clusters) {
		rec.add(ctx, Step{Step: "control planes", Action: "skipped", Error: "not every cluster is reachable; gateways and Istio resources need them all"})
		return
	}
	opts := p.Deploy
	dry := false
	for _, c := range conns {
		dry = dry || c.DryRun
	}
	opts.AllowPendingAddress = dry
	opts.BeforeControlPlane = gate.wait
	opts.BeforeControlPlanes = federate
	// A scoped pass writes only into its clusters; the others are read
	// for the gateway addresses their plans embed.
	res, err := gateways.ApplyMeshScoped(ctx, conns, p.Layout, opts, o.Clusters, func(line string) { h.progressf("", "%s", line) })
	if res != nil {
		names := make([]string, 0, len(res.Applied))
		for n := range res.Applied {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			applied := res.Applied[n]
			if dry {
				action, detail := planSummary(applied)
				rec.add(ctx, Step{Cluster: n, Step: "control plane", Action: action, Detail: detail})
				continue
			}
			detail := fmt.Sprintf("%d objects", len(applied))
			if a, ok := res.Addresses[n]; ok && a.Host != "" {
				detail += ", gateway " + a.Host
			}
			rec.add(ctx, Step{Cluster: n, Step: "control plane", Action: h.controlPlaneAction(ctx, n, applied, dry), Detail: detail})
		}
	}
	if err != nil {
		rec.fail(ctx, "", "control planes", err)
	}
}

// planSummary says what a dry run found for one cluster's objects: "would
// change" or "none", with the counts and the objects that would change, e.g.
// "create 1, update 1, none 8: Namespace istio-system (update), Istio default (update)".
// Objects the API server would refuse count as changes (invalid).
func planSummary(applied []deploy.Applied) (string, string) {
	counts := map[string]int{}
	var changes []string
	for _, a := range applied {
		counts[a.Action]++
		if a.Action != deploy.ActionNone {
			changes = append(changes, a.Ref+" ("+a.Action+")")
		}
	}
	detail := fmt.Sprintf("create %d, update %d, none %d", counts[deploy.ActionCreate], counts[deploy.ActionUpdate], counts[deploy.ActionNone])
	if n := counts[deploy.ActionInvalid]; n > 0 {
		detail += fmt.Sprintf(", invalid %d", n)
	}
	if len(changes) == 0 {
		return "none", detail
	}
	return "would change", detail + ": " + strings.Join(changes, ", ")
}

func coreServiceType(t spec.ServiceType) corev1.ServiceType { return corev1.ServiceType(t) }

// controlPlaneAction tells "applied" from "unchanged": a no-op server-side
// apply leaves flotilla's managedFields entry as it was, while controllers'
// status writes do not touch it.
func (h *Hub) controlPlaneAction(ctx context.Context, cluster string, applied []deploy.Applied, dryRun bool) string {
	if dryRun {
		return "validated"
	}
	now := map[string]string{}
	for _, a := range applied {
		now[a.Ref] = a.Owned
	}
	key := "controlplane/" + cluster + "/versions"
	var before map[string]string
	changed := true
	err := h.Store.Update(ctx, func(tx *state.Tx) error {
		if ok, err := tx.Value(key, &before); err != nil || !ok {
			return tx.PutValue(key, now)
		}
		changed = !maps.Equal(before, now)
		if changed {
			return tx.PutValue(key, now)
		}
		return nil
	})
	if err != nil || changed {
		return "applied"
	}
	return "unchanged"
}
