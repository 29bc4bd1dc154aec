package gateways

import (
	"context"
	"testing"

	"github.com/flotillamesh/flotilla/deploy"
)

// actions is what a dry run said per object of one cluster.
func actions(res *Result, cluster string) map[string]string {
	out := map[string]string{}
	for _, a := range res.Applied[cluster] {
		out[a.Ref] = a.Action
	}
	return out
}

// TestLabPlanActions checks what a dry run says apply would do to each
// object: create on a fresh install, none right after an apply, update for
// the objects a changed network touches and none elsewhere.
func TestLabPlanActions(t *testing.T) {
	ctx := context.Background()
	_, clusters := labClusters(t, false)
	resetSail(t, clusters)
	_, dry := labClusters(t, true)
	opts := prefixed("plan", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
	members := []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n2")}
	moved := []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n3")}

	plan := func(t *testing.T, ms []deploy.Member) *Result {
		t.Helper()
		res, err := applyMesh(ctx, dry, deploy.MultiPrimary, ms, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// every asserts that each object of cluster has action want, except
	// those in but, which must have theirs.
	every := func(t *testing.T, res *Result, cluster, want string, but map[string]string) {
		t.Helper()
		got := actions(res, cluster)
		if len(got) == 0 {
			t.Fatalf("%s: no objects planned", cluster)
		}
		for ref, w := range but {
			if got[ref] != w {
				t.Errorf("%s: %s: %q, want %q", cluster, ref, got[ref], w)
			}
		}
		for ref, a := range got {
			if _, ok := but[ref]; !ok && a != want {
				t.Errorf("%s: %s: %q, want %q", cluster, ref, a, want)
			}
		}
	}

	t.Run("fresh namespace: create for all", func(t *testing.T) {
		res := plan(t, members)
		every(t, res, "east", deploy.ActionCreate, nil)
		every(t, res, "west", deploy.ActionCreate, nil)
	})

	if _, err := applyMesh(ctx, clusters, deploy.MultiPrimary, members, opts, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("after apply: none for all", func(t *testing.T) {
		res := plan(t, members)
		every(t, res, "east", deploy.ActionNone, nil)
		every(t, res, "west", deploy.ActionNone, nil)
	})

	t.Run("west moved to another network: its namespace and Istio update", func(t *testing.T) {
		res, err := applyMesh(ctx, dry, deploy.MultiPrimary, moved, opts, nil)
		if err != nil {
			// Nothing may be refused: the gateway's Deployment keeps the
			// network out of its (immutable) selector.
			t.Fatalf("a network move was refused: %v", err)
		}
		every(t, res, "east", deploy.ActionNone, nil)
		got := actions(res, "west")
		for _, ref := range []string{"Namespace " + opts.Namespace, "Istio " + deploy.IstioName} {
			if got[ref] != deploy.ActionUpdate {
				t.Errorf("west: %s: %q, want %q (all: %v)", ref, got[ref], deploy.ActionUpdate, got)
			}
		}
	})
}
