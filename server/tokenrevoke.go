package server

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
)

// DefaultSupersededGrace is how long a renewed reader token is in the remote
// secrets before the reconcile loop revokes the token it replaced: istiod
// replaces a remote cluster only once the one built from the new secret has
// synced (make-before-break), which takes moments; an istiod that reports
// the cluster not synced holds the revocation longer.
const DefaultSupersededGrace = 2 * time.Minute

func (h *Hub) supersededGrace() time.Duration {
	if h.SupersededGrace > 0 {
		return h.SupersededGrace
	}
	return DefaultSupersededGrace
}

// revokeSuperseded revokes the tokens superseded by each read cluster's
// current credential, for the read clusters whose every remote secret was
// written with it in this pass, once that credential is grace old and no
// reading istiod reports the cluster not synced.
func (h *Hub) revokeSuperseded(ctx context.Context, res *federation.Result, conns map[string]*kube.Cluster, grace time.Duration, rec *recorder) []federation.Revocation {
	creds := map[string]federation.Credential{}
	for _, c := range res.Credentials {
		creds[c.Key()] = c
	}
	var out []federation.Revocation
	for _, t := range res.Targets {
		kc := conns[t.Cluster]
		if t.Err != nil || t.OutOfScope || kc == nil {
			continue // another replica's pass revokes its clusters' tokens
		}
		keep, ok := creds[federation.Credential{Cluster: t.Cluster, Namespace: t.Account.Namespace, Account: t.Account.Name}.Key()]
		if !ok || keep.Binding == "" || !linksWritten(res, t.Cluster) {
			continue
		}
		hold := func(ctx context.Context) bool {
			why := istiodsNotSynced(ctx, conns, readersOfTarget(res.Plan, t.Cluster), t.Cluster)
			if why != "" {
				h.progressf(t.Cluster, "reader %s: superseded tokens kept: %s", t.Account, why)
			}
			return why != ""
		}
		// Real time against the API server's timestamps: the grace is for
		// istiod, whatever the hub's clock says.
		revoked, err := federation.RevokeSuperseded(ctx, kc, t.Account, keep, grace, time.Now(), hold)
		for _, r := range revoked {
			rec.add(ctx, Step{Cluster: t.Cluster, Step: "reader " + t.Account.String(), Action: "revoked",
				Detail: fmt.Sprintf("superseded token (binding secret %s/%s deleted; replaced %s)", t.Account.Namespace, r.Binding, r.Superseded.UTC().Format(time.RFC3339))})
		}
		if err != nil {
			rec.fail(ctx, t.Cluster, "reader "+t.Account.String(), err)
		}
		out = append(out, revoked...)
	}
	return out
}

// linksWritten: every secret that reads target holds its current
// credential after this pass (none failed).
func linksWritten(res *federation.Result, target string) bool {
	for _, l := range res.Links {
		if l.Target == target && (l.Err != nil || l.Action == federation.Failed) {
			return false
		}
	}
	return true
}

func readersOfTarget(p federation.Plan, target string) []string {
	var rs []string
	for _, l := range p.Links {
		if l.Target == target && !slices.Contains(rs, l.Reader) {
			rs = append(rs, l.Reader)
		}
	}
	sort.Strings(rs)
	return rs
}

// istiodsNotSynced says which istiod of the readers reports target other
// than synced (clusterz, read as flotilla check reads it); "" when none
// does. An istiod that cannot be read, or does not list target, holds
// nothing: a cluster it does not read loses nothing by the revocation.
func istiodsNotSynced(ctx context.Context, conns map[string]*kube.Cluster, readers []string, target string) string {
	var why []string
	for _, r := range readers {
		kc := conns[r]
		if kc == nil {
			continue
		}
		views, err := readIstiods(ctx, kc, false)
		if err != nil {
			continue
		}
		for _, v := range views {
			if st, ok := v.RemoteClusters[target]; ok && st != "synced" {
				why = append(why, fmt.Sprintf("%s: istiod %s/%s reports %s %s", r, v.Namespace, v.Pod, target, st))
			}
		}
	}
	return strings.Join(why, "; ")
}
