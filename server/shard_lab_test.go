package server

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestScopedApply: an apply scoped to east (a replica's share of the ring)
// repairs east's cacerts and the remote secret east holds, and writes
// nothing into west, whose deleted cacerts and secret stay deleted; its
// report and journal entry name east alone, and it left the spec as it was.
// With west's fence held by another pass, a pass scoped to west alone is
// refused, and a user's apply waits for the fence before it changes
// anything; once it is released the apply converges west.
func TestScopedApply(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "scoped")
	if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("first apply: %v %v", err, rep.Err())
	}
	east, west := connectLab(t, l, "east"), connectLab(t, l, "west")
	held := map[string]string{"east": "istio-remote-secret-west", "west": "istio-remote-secret-east"}
	for name, c := range map[string]*kube.Cluster{"east": east, "west": west} {
		for _, secret := range []string{pki.SecretName, held[name]} {
			if err := c.Kube.CoreV1().Secrets(ns).Delete(ctx, secret, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("%s: delete %s: %v", name, secret, err)
			}
		}
	}
	specBefore, _ := h.StoredMesh(ctx)
	rep, err := h.Apply(ctx, nil, ApplyOptions{Clusters: []string{"east"}, Source: "reconcile"})
	if err != nil || rep.Err() != nil {
		t.Fatalf("scoped apply: %v %v", err, rep.Err())
	}
	if !slices.Equal(rep.Clusters, []string{"east"}) {
		t.Errorf("report covers %v, want [east]", rep.Clusters)
	}
	for _, s := range rep.Steps {
		if s.Cluster == "west" {
			t.Errorf("scoped apply did a step in west: %s %s (%s)", s.Step, s.Action, s.Detail)
		}
	}
	for _, secret := range []string{pki.SecretName, held["east"]} {
		if _, err := east.Kube.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{}); err != nil {
			t.Errorf("east: %s not restored by the pass scoped to east: %v", secret, err)
		}
	}
	for _, secret := range []string{pki.SecretName, held["west"]} {
		if _, err := west.Kube.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("west: %s written by the pass scoped to east (err %v)", secret, err)
		}
	}
	var entry state.ApplyRecord
	if err := h.Store.View(ctx, func(tx *state.Tx) (err error) { entry, _, err = tx.ApplyRecord(rep.ID); return err }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(entry.Clusters, []string{"east"}) || entry.Kind != state.KindReconcile {
		t.Errorf("journal entry %d: kind %s, clusters %v; want reconcile over [east]", entry.ID, entry.Kind, entry.Clusters)
	}
	if specAfter, _ := h.StoredMesh(ctx); string(specAfter.Canonical()) != string(specBefore.Canonical()) {
		t.Error("the scoped apply changed the stored spec")
	}

	// Another pass holds west's fence.
	f, ok, err := h.Store.TryFence(ctx, fenceName("west"), reconcileFenceTTL)
	if err != nil || !ok {
		t.Fatalf("take west's fence: ok=%v err=%v", ok, err)
	}
	var fe *FencedError
	if _, err := h.Apply(ctx, nil, ApplyOptions{Clusters: []string{"west"}}); !errors.As(err, &fe) {
		t.Errorf("pass scoped to fenced west: got %v, want a FencedError", err)
	}
	done := make(chan error, 1)
	go func() {
		rep, err := h.Apply(ctx, m, ApplyOptions{})
		if err == nil {
			err = rep.Err()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the user's apply ran while west's fence was held: %v", err)
	case <-time.After(2 * time.Second):
	}
	if _, err := west.Kube.CoreV1().Secrets(ns).Get(ctx, pki.SecretName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("west's cacerts written while its fence was held (err %v)", err)
	}
	f.Release()
	if err := <-done; err != nil {
		t.Fatalf("the user's apply after the fence's release: %v", err)
	}
	for _, secret := range []string{pki.SecretName, held["west"]} {
		if _, err := west.Kube.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{}); err != nil {
			t.Errorf("west: %s not restored by the full apply: %v", secret, err)
		}
	}
}
