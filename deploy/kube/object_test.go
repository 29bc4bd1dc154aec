package kube

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

func TestContains(t *testing.T) {
	tests := []struct {
		name       string
		have, want any
		ok         bool
	}{
		{"equal strings", "a", "a", true},
		{"different strings", "a", "b", false},
		{"float from JSON, int64 from the API", int64(15443), float64(15443), true},
		{"different numbers", int64(15443), float64(15444), false},
		{"number against string", "15443", float64(15443), false},
		{"extra keys in have", map[string]any{"a": "1", "b": "2"}, map[string]any{"a": "1"}, true},
		{"key missing in have", map[string]any{"b": "2"}, map[string]any{"a": "1"}, false},
		{"null stands for absent", map[string]any{}, map[string]any{"a": nil}, true},
		{"nested defaults in have", map[string]any{"spec": map[string]any{"ports": []any{map[string]any{"port": int64(1), "protocol": "TCP"}}}},
			map[string]any{"spec": map[string]any{"ports": []any{map[string]any{"port": float64(1)}}}}, true},
		{"list of another length", []any{"a", "b"}, []any{"a"}, false},
		{"list in another order", []any{"b", "a"}, []any{"a", "b"}, false},
		{"map against list", []any{"a"}, map[string]any{"a": "1"}, false},
		{"bools", true, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := contains(tc.have, tc.want); got != tc.ok {
				t.Errorf("contains(%v, %v) = %v, want %v", tc.have, tc.want, got, tc.ok)
			}
		})
	}
}

// TestUpToDate: a live object is up to date only when flotilla applied this
// very configuration (digest), still holds an apply entry, and keeps every
// field of it.
func TestUpToDate(t *testing.T) {
	o, err := Typed(corev1ac.ConfigMap("cm", "ns").WithLabels(map[string]string{"a": "1"}).WithData(map[string]string{"k": "v"}),
		func(context.Context, *Cluster, *corev1ac.ConfigMapApplyConfiguration) (metav1.Object, error) {
			return nil, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if o.digest == "" {
		t.Fatal("typed object has no digest")
	}
	if got := o.Unstructured().GetAnnotations()[DigestAnnotation]; got != o.digest {
		t.Errorf("the rendered object's digest annotation is %q, want %q", got, o.digest)
	}
	applied := []metav1.ManagedFieldsEntry{{Manager: ManagerControlPlane, Operation: metav1.ManagedFieldsOperationApply}}
	live := func(mutate func(u *unstructured.Unstructured)) *unstructured.Unstructured {
		u := o.Unstructured()
		u.SetResourceVersion("7")
		u.SetManagedFields(applied)
		if mutate != nil {
			mutate(u)
		}
		return u
	}
	tests := []struct {
		name string
		live *unstructured.Unstructured
		want bool
	}{
		{"as applied", live(nil), true},
		{"with fields of others", live(func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(u.Object, "x", "data", "other")
			u.SetLabels(map[string]string{"a": "1", "b": "2"})
		}), true},
		{"missing", nil, false},
		{"value changed", live(func(u *unstructured.Unstructured) { _ = unstructured.SetNestedField(u.Object, "w", "data", "k") }), false},
		{"label removed", live(func(u *unstructured.Unstructured) { u.SetLabels(nil) }), false},
		{"other digest: the desired configuration changed", live(func(u *unstructured.Unstructured) {
			u.SetAnnotations(map[string]string{DigestAnnotation: "sha256:00"})
		}), false},
		{"no digest: applied by someone else", live(func(u *unstructured.Unstructured) { u.SetAnnotations(nil) }), false},
		{"flotilla's apply entry gone", live(func(u *unstructured.Unstructured) {
			u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}})
		}), false},
		{"being deleted", live(func(u *unstructured.Unstructured) { now := metav1.Now(); u.SetDeletionTimestamp(&now) }), false},
		{"applied by another flotilla manager", live(func(u *unstructured.Unstructured) {
			u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: ManagerGateways, Operation: metav1.ManagedFieldsOperationApply}})
		}), false},
		{"applied only by the legacy manager: to be taken over", live(func(u *unstructured.Unstructured) {
			u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: FieldManager, Operation: metav1.ManagedFieldsOperationApply}})
		}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := o.UpToDate(tc.live, ManagerControlPlane); got != tc.want {
				t.Errorf("UpToDate = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDigest: equal objects have equal digests whatever the order they were
// built in; any change of content changes it; Custom objects get one too.
func TestDigest(t *testing.T) {
	mk := func(labels map[string]string, data map[string]string) string {
		o, err := Typed(corev1ac.ConfigMap("cm", "ns").WithLabels(labels).WithData(data),
			func(context.Context, *Cluster, *corev1ac.ConfigMapApplyConfiguration) (metav1.Object, error) {
				return nil, nil
			})
		if err != nil {
			t.Fatal(err)
		}
		return o.digest
	}
	a := mk(map[string]string{"x": "1", "y": "2"}, map[string]string{"k": "v"})
	if b := mk(map[string]string{"y": "2", "x": "1"}, map[string]string{"k": "v"}); a != b {
		t.Errorf("same object, different digests: %s %s", a, b)
	}
	if c := mk(map[string]string{"x": "1", "y": "2"}, map[string]string{"k": "w"}); a == c {
		t.Error("changed data, same digest")
	}
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "cm", "namespace": "ns"}}}
	if Custom(u).digest == "" {
		t.Error("custom object has no digest")
	}
	if got := Custom(u).Unstructured().GetAnnotations()[DigestAnnotation]; got != Custom(u).digest {
		t.Errorf("the rendered custom object's digest annotation is %q, want %q", got, Custom(u).digest)
	}
	if Custom(Custom(u).Unstructured()).digest != Custom(u).digest {
		t.Error("re-wrapping a rendered object changes its digest")
	}
}

// TestBuiltinResources: the resource of every built-in kind flotilla applies
// is found without discovery.
func TestBuiltinResources(t *testing.T) {
	for kind, want := range map[string]string{
		"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
		"ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
		"Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets", "Service": "services",
		"HorizontalPodAutoscaler": "horizontalpodautoscalers", "ConfigMap": "configmaps", "Secret": "secrets",
	} {
		gvr, _ := meta.UnsafeGuessKindToResource(schema.GroupVersionKind{Kind: kind})
		if gvr.Resource != want {
			t.Errorf("%s: resource %q, want %q", kind, gvr.Resource, want)
		}
	}
}
