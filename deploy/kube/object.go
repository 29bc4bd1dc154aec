package kube

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Object is one object of a plan: the same value renders as YAML (--render)
// and applies to a cluster with server-side apply, through the typed client
// for built-in kinds and the dynamic client for custom resources.
type Object struct {
	u     *unstructured.Unstructured
	apply func(context.Context, *Cluster) (metav1.Object, error)
	// named: apply's errors already name the cluster and the object.
	named bool
}

// Typed wraps a client-go apply configuration and the typed call that applies
// it, e.g.
//
//	kube.Typed(ac, func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
//		return c.Kube.CoreV1().Services(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
//	})
//
// The apply configuration must carry its apiVersion and kind (the generated
// constructors set them).
func Typed[AC any](ac AC, apply func(context.Context, *Cluster, AC) (metav1.Object, error)) (Object, error) {
	data, err := json.Marshal(ac)
	if err != nil {
		return Object{}, fmt.Errorf("encode apply configuration: %w", err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(data, &u.Object); err != nil {
		return Object{}, fmt.Errorf("decode apply configuration: %w", err)
	}
	if u.GetKind() == "" || u.GetAPIVersion() == "" {
		return Object{}, fmt.Errorf("apply configuration %s has no apiVersion or kind", u.GetName())
	}
	return Object{u: u, apply: func(ctx context.Context, c *Cluster) (metav1.Object, error) { return apply(ctx, c, ac) }}, nil
}

// Custom wraps an object that has no typed client here (Istio, Sail and
// cert-manager resources); it applies through Cluster.Apply.
func Custom(u *unstructured.Unstructured) Object {
	u = u.DeepCopy()
	return Object{u: u, named: true, apply: func(ctx context.Context, c *Cluster) (metav1.Object, error) { return c.Apply(ctx, u) }}
}

// Ref names the object as errors and progress lines do.
func (o Object) Ref() string { return ObjectRef(o.u) }

// Unstructured returns a copy of the object as it is rendered and sent.
func (o Object) Unstructured() *unstructured.Unstructured { return o.u.DeepCopy() }

// Apply server-side applies the object and returns it as stored (with
// c.DryRun: as it would be stored).
func (o Object) Apply(ctx context.Context, c *Cluster) (metav1.Object, error) {
	out, err := o.apply(ctx, c)
	if err != nil {
		if o.named {
			return nil, err
		}
		return nil, fmt.Errorf("%s: apply %s: %w", c.Name, o.Ref(), err)
	}
	return out, nil
}
