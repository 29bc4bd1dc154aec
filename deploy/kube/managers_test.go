package kube

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestWithoutCoveredLegacy: a FieldManager entry goes only when the
// subsystem managers own every field it lists; other entries always stay.
func TestWithoutCoveredLegacy(t *testing.T) {
	entry := func(manager string, op metav1.ManagedFieldsOperationType, fields string) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
	}
	const (
		apply  = metav1.ManagedFieldsOperationApply
		update = metav1.ManagedFieldsOperationUpdate
		label  = `{"f:metadata":{"f:labels":{"f:app.kubernetes.io/managed-by":{}}}}`
		net    = `{"f:metadata":{"f:labels":{"f:topology.istio.io/network":{}}}}`
		both   = `{"f:metadata":{"f:labels":{"f:app.kubernetes.io/managed-by":{},"f:topology.istio.io/network":{}}}}`
		annot  = `{"f:metadata":{"f:annotations":{"f:topology.istio.io/controlPlaneClusters":{}}}}`
	)
	tests := []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		keep    []string // managers of the entries kept, in order
		dropped bool
	}{
		{"no legacy entry", []metav1.ManagedFieldsEntry{entry(ManagerControlPlane, apply, both)}, []string{ManagerControlPlane}, false},
		{"covered by one subsystem", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, both), entry(ManagerControlPlane, apply, both)},
			[]string{ManagerControlPlane}, true},
		{"covered by two subsystems together", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, both), entry(ManagerControlPlane, apply, net), entry(ManagerFederation, apply, label)},
			[]string{ManagerControlPlane, ManagerFederation}, true},
		{"a field no subsystem owns yet", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, both), entry(ManagerFederation, apply, label)},
			[]string{FieldManager, ManagerFederation}, false},
		{"covered by a stranger only", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, label), entry("kubectl", apply, label)},
			[]string{FieldManager, "kubectl"}, false},
		{"legacy update entry too, one covered", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, both), entry(FieldManager, update, annot), entry(ManagerControlPlane, apply, both)},
			[]string{FieldManager, ManagerControlPlane}, true},
		{"an older flotilla's create: the labels map and the name label the API server sets", []metav1.ManagedFieldsEntry{
			entry(FieldManager, update, `{"f:metadata":{"f:labels":{".":{},"f:kubernetes.io/metadata.name":{},"f:app.kubernetes.io/managed-by":{}}}}`),
			entry(ManagerFederation, apply, label)},
			[]string{ManagerFederation}, true},
		{"a map no subsystem writes into", []metav1.ManagedFieldsEntry{
			entry(FieldManager, update, `{"f:metadata":{"f:annotations":{".":{}}}}`), entry(ManagerFederation, apply, label)},
			[]string{FieldManager, ManagerFederation}, false},
		{"both legacy entries covered", []metav1.ManagedFieldsEntry{entry(FieldManager, apply, both), entry(FieldManager, update, annot), entry(ManagerControlPlane, apply, both), entry(ManagerFederation, apply, annot)},
			[]string{ManagerControlPlane, ManagerFederation}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := &metav1.ObjectMeta{ManagedFields: tc.entries}
			keep, dropped, err := withoutCoveredLegacy(obj)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range keep {
				got = append(got, e.Manager)
			}
			if !slices.Equal(got, tc.keep) || dropped != tc.dropped {
				t.Errorf("kept %v (dropped %v), want %v (dropped %v)", got, dropped, tc.keep, tc.dropped)
			}
		})
	}
}
