package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// The server-side apply field managers of flotilla's subsystems. Each owns
// the fields its subsystem writes: a subsystem's apply drops only fields it
// stopped writing itself, never another's, so several of them can apply the
// same namespace.
const (
	// ManagerPKI: cacerts, cert-manager Issuers and Certificates, MeshIssuer,
	// the csr-agent and what it writes.
	ManagerPKI = "flotilla-pki"
	// ManagerFederation: reader accounts and their RBAC, remote and config
	// secrets, the namespace labels and annotations federation needs.
	ManagerFederation = "flotilla-federation"
	// ManagerGateways: gateway workloads, Services and the Istio Gateway and
	// VirtualService resources that configure them.
	ManagerGateways = "flotilla-gateways"
	// ManagerControlPlane: the Sail Istio and IstioCNI resources and the
	// namespaces with the network label.
	ManagerControlPlane = "flotilla-controlplane"
	// ManagerVerify: the helloworld sample that verify deploys.
	ManagerVerify = "flotilla-verify"
)

// FieldManager is the single manager flotilla wrote everything with before
// the subsystem managers, and the manager of a connection no subsystem has
// narrowed with As (and of a render applied by hand). Its entries are taken
// over (TakeOver) once the subsystems own every field they list.
const FieldManager = "flotilla"

// Managers are the subsystem managers; a fresh slice each time.
func Managers() []string {
	return []string{ManagerPKI, ManagerFederation, ManagerGateways, ManagerControlPlane, ManagerVerify}
}

// Owns reports whether c's manager has applied obj (it has an apply entry
// for the main resource), i.e. owns whatever fields it last applied.
func (c *Cluster) Owns(obj metav1.Object) bool { return AppliedEntry(obj, c.Manager()) != nil }

// Legacy reports whether obj still carries an entry of FieldManager.
func Legacy(obj metav1.Object) bool {
	return slices.ContainsFunc(obj.GetManagedFields(), isLegacy)
}

func isLegacy(mf metav1.ManagedFieldsEntry) bool {
	return mf.Manager == FieldManager && mf.Subresource == ""
}

// serverSet are fields the API server sets itself whoever writes the
// object, so they need no owner: the name label of every namespace, which
// the creator's entry lists (an older flotilla created namespaces).
func serverSet() *fieldpath.Set {
	return fieldpath.NewSet(fieldpath.MakePathOrDie("metadata", "labels", corev1.LabelMetadataName))
}

// withoutCoveredLegacy returns obj's managedFields without the FieldManager
// entries whose every field some subsystem manager owns too, and whether
// it dropped any. A map or list an entry lists for itself (an update's
// ".") is covered by a subsystem owning a field inside it. An entry with a
// field no subsystem owns stays: dropping it would leave the field to
// nobody, and a later apply could neither remove nor claim it knowingly.
func withoutCoveredLegacy(obj metav1.Object) ([]metav1.ManagedFieldsEntry, bool, error) {
	entries := obj.GetManagedFields()
	owned := serverSet()
	for _, mf := range entries {
		if mf.Subresource != "" || !slices.Contains(Managers(), mf.Manager) || mf.FieldsV1 == nil {
			continue
		}
		s := &fieldpath.Set{}
		if err := s.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
			return nil, false, fmt.Errorf("managedFields of %s: %w", mf.Manager, err)
		}
		owned = owned.Union(s)
	}
	// With every owned field, the maps and lists that hold it.
	holders := &fieldpath.Set{}
	owned.Iterate(func(p fieldpath.Path) {
		for i := 1; i < len(p); i++ {
			holders.Insert(p[:i].Copy())
		}
	})
	owned = owned.Union(holders)
	out := make([]metav1.ManagedFieldsEntry, 0, len(entries))
	dropped := false
	for _, mf := range entries {
		if !isLegacy(mf) {
			out = append(out, mf)
			continue
		}
		s := &fieldpath.Set{}
		if mf.FieldsV1 != nil {
			if err := s.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
				return nil, false, fmt.Errorf("managedFields of %s: %w", mf.Manager, err)
			}
		}
		if !s.Difference(owned).Empty() {
			out = append(out, mf)
			continue
		}
		dropped = true
	}
	return out, dropped, nil
}

// TakeOver removes the FieldManager entries of obj (of resource gvr, as
// just written or read from c) that the subsystem managers have taken
// over: every field such an entry lists is owned by a subsystem manager
// too. Removing the entry loses no field and leaves every field with an
// owner, so a later apply by its subsystem can drop what it no longer
// writes. Entries not yet covered stay until the subsystem that writes the
// rest has applied (a namespace several subsystems write); each write
// calls TakeOver, so the last of them removes the entry. Without a legacy
// entry it makes no request; a dry run, or a connection that writes as
// FieldManager itself, changes nothing.
//
// The patch replaces metadata.managedFields guarded by a test of the
// resourceVersion, as "Server-Side Apply: transferring ownership" does;
// when another writer came first, it reads the object again and retries.
func (c *Cluster) TakeOver(ctx context.Context, gvr schema.GroupVersionResource, obj metav1.Object) error {
	if c.DryRun || c.Manager() == FieldManager || obj == nil || !Legacy(obj) {
		return nil
	}
	ri := c.Dynamic.Resource(gvr).Namespace(obj.GetNamespace())
	ref := gvr.Resource + " " + obj.GetName()
	if ns := obj.GetNamespace(); ns != "" {
		ref = gvr.Resource + " " + ns + "/" + obj.GetName()
	}
	for attempt := 0; ; attempt++ {
		keep, dropped, err := withoutCoveredLegacy(obj)
		if err != nil {
			return fmt.Errorf("%s: take over %s: %w", c.Name, ref, err)
		}
		if !dropped {
			return nil
		}
		patch, err := json.Marshal([]map[string]any{
			{"op": "test", "path": "/metadata/resourceVersion", "value": obj.GetResourceVersion()},
			{"op": "replace", "path": "/metadata/managedFields", "value": keep},
		})
		if err != nil {
			return fmt.Errorf("%s: take over %s: %w", c.Name, ref, err)
		}
		_, err = ri.Patch(ctx, obj.GetName(), types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: c.Manager()})
		if err == nil || apierrors.IsNotFound(err) {
			return nil
		}
		// A failed test op is Invalid (422); a write in between may also be a Conflict.
		if attempt == 4 || !(apierrors.IsInvalid(err) || apierrors.IsConflict(err)) {
			return fmt.Errorf("%s: take over %s from field manager %s: %w", c.Name, ref, FieldManager, err)
		}
		live, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", c.Name, ref, err)
		}
		if !Legacy(live) {
			return nil
		}
		obj = live
	}
}
