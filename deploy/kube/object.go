package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// DigestAnnotation holds a digest of the configuration flotilla last applied
// to an object. With it, a re-apply of an unchanged spec can tell from a read
// alone that there is nothing to write: the digest says flotilla's desired
// configuration is the one last applied (so no field was dropped from it),
// and the live object still holds every field of it (nobody changed one).
const DigestAnnotation = "flotilla.dev/config-digest"

// Object is one object of a plan: the same value renders as YAML (--render)
// and applies to a cluster with server-side apply, through the typed client
// for built-in kinds and the dynamic client for custom resources.
type Object struct {
	// u is the object as rendered and sent, digest annotation included: a
	// render applied with kubectl is then what flotilla's apply makes.
	u *unstructured.Unstructured
	// digest of u; "" when the object cannot carry it (always applied).
	digest string
	apply  func(context.Context, *Cluster) (metav1.Object, error)
	// named: apply's errors already name the cluster and the object.
	named bool
	// builtin: a kind with a typed client, whose resource needs no discovery.
	builtin bool
}

// Typed wraps a client-go apply configuration and the typed call that applies
// it, e.g.
//
//	kube.Typed(ac, func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
//		return c.Kube.CoreV1().Services(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
//	})
//
// The apply configuration must carry its apiVersion and kind (the generated
// constructors set them). Typed adds the digest annotation to ac itself.
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
	dropDigest(u) // an apply configuration typed twice
	o := Object{u: u, builtin: true, apply: func(ctx context.Context, c *Cluster) (metav1.Object, error) { return apply(ctx, c, ac) }}
	// Every generated apply configuration has WithAnnotations.
	if a, ok := any(ac).(interface {
		WithAnnotations(map[string]string) AC
	}); ok {
		if o.digest, err = digest(u); err != nil {
			return Object{}, err
		}
		a.WithAnnotations(map[string]string{DigestAnnotation: o.digest})
		setDigest(u, o.digest)
	}
	return o, nil
}

// Custom wraps an object that has no typed client here (Istio, Sail and
// cert-manager resources); it applies through Cluster.Apply.
func Custom(u *unstructured.Unstructured) Object {
	u = u.DeepCopy()
	dropDigest(u) // a live object applied again
	// Not encodable: no digest, so never skipped, and the apply says why.
	d, _ := digest(u)
	if d != "" {
		setDigest(u, d)
	}
	return Object{u: u, digest: d, named: true, apply: func(ctx context.Context, c *Cluster) (metav1.Object, error) {
		gvr, namespaced, err := c.Resource(ctx, u.GroupVersionKind())
		if err != nil {
			return nil, err
		}
		// Object.Apply takes it over.
		return c.apply(ctx, gvr, namespaced, u)
	}}
}

func setDigest(u *unstructured.Unstructured, d string) {
	ann := u.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[DigestAnnotation] = d
	u.SetAnnotations(ann)
}

// dropDigest removes DigestAnnotation from u.
func dropDigest(u *unstructured.Unstructured) {
	ann := u.GetAnnotations()
	if _, ok := ann[DigestAnnotation]; !ok {
		return
	}
	delete(ann, DigestAnnotation)
	if len(ann) == 0 {
		ann = nil
	}
	u.SetAnnotations(ann)
}

// digest is the SHA-256 of u's JSON encoding (encoding/json sorts map keys,
// so equal objects have equal digests).
func digest(u *unstructured.Unstructured) (string, error) {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", ObjectRef(u), err)
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Ref names the object as errors and progress lines do.
func (o Object) Ref() string { return ObjectRef(o.u) }

// Unstructured returns a copy of the object as it is rendered and applied.
func (o Object) Unstructured() *unstructured.Unstructured { return o.u.DeepCopy() }

// Apply server-side applies the object as c's manager, takes it over from
// FieldManager where that is due (TakeOver), and returns it as stored (with
// c.DryRun: as it would be stored).
func (o Object) Apply(ctx context.Context, c *Cluster) (metav1.Object, error) {
	out, err := o.apply(ctx, c)
	if err != nil {
		if o.named {
			return nil, err
		}
		return nil, fmt.Errorf("%s: apply %s: %w", c.Name, o.Ref(), err)
	}
	return out, o.TakeOver(ctx, c, out)
}

// TakeOver is Cluster.TakeOver for the stored object live of o.
func (o Object) TakeOver(ctx context.Context, c *Cluster, live metav1.Object) error {
	if c.DryRun || c.Manager() == FieldManager || live == nil || !Legacy(live) {
		return nil
	}
	gvr, _, err := o.resource(ctx, c)
	if err != nil {
		return err
	}
	return c.TakeOver(ctx, gvr, live)
}

func (o Object) resource(ctx context.Context, c *Cluster) (schema.GroupVersionResource, bool, error) {
	if o.builtin {
		// Built-in kinds are named regularly, and their typed apply needs no
		// discovery either; discovery would not heed ctx.
		gvr, _ := meta.UnsafeGuessKindToResource(o.u.GroupVersionKind())
		return gvr, o.u.GetNamespace() != "", nil
	}
	return c.Resource(ctx, o.u.GroupVersionKind())
}

// Get reads the object as it is stored in c; nil when it does not exist.
func (o Object) Get(ctx context.Context, c *Cluster) (*unstructured.Unstructured, error) {
	gvr, namespaced, err := o.resource(ctx, c)
	if err != nil {
		return nil, err
	}
	var ri dynamic.ResourceInterface = c.Dynamic.Resource(gvr)
	if namespaced {
		ri = c.Dynamic.Resource(gvr).Namespace(o.u.GetNamespace())
	}
	live, err := ri.Get(ctx, o.u.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", c.Name, o.Ref(), err)
	}
	return live, nil
}

// UpToDate reports whether live already is what applying o as manager
// would make it: flotilla last applied this very configuration (the
// digest), manager still owns fields through an apply, and every field of
// o holds the value o gives it. Fields others added (defaults, status,
// other managers' fields) do not matter, as they would survive the apply
// too. An object FieldManager wrote but manager has not applied is not up
// to date: manager must own its fields before it can take the object over.
func (o Object) UpToDate(live *unstructured.Unstructured, manager string) bool {
	if live == nil || o.digest == "" || live.GetDeletionTimestamp() != nil {
		return false
	}
	if live.GetAnnotations()[DigestAnnotation] != o.digest {
		return false
	}
	return AppliedEntry(live, manager) != nil && contains(live.Object, o.u.Object)
}

// AppliedEntry is manager's server-side-apply entry in obj's managedFields
// (the object's main resource, not a subresource); nil when it has none.
func AppliedEntry(obj metav1.Object, manager string) *metav1.ManagedFieldsEntry {
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager == manager && mf.Operation == metav1.ManagedFieldsOperationApply && mf.Subresource == "" {
			return &mf
		}
	}
	return nil
}

// Converge applies o to c unless the stored object is already up to date
// for c's manager (UpToDate), in which case it writes nothing but, where
// due, the takeover from FieldManager. It returns the object as stored
// and whether it was applied.
func (o Object) Converge(ctx context.Context, c *Cluster) (metav1.Object, bool, error) {
	live, err := o.Get(ctx, c)
	if err != nil {
		return nil, false, err
	}
	if o.UpToDate(live, c.Manager()) {
		return live, false, o.TakeOver(ctx, c, live)
	}
	got, err := o.Apply(ctx, c)
	return got, err == nil, err
}

// contains reports whether have holds want: every map key of want with a
// value have holds, lists of the same length element by element, and equal
// scalars (numbers compared by value: decoded JSON has float64 where the
// API's objects have int64). A null in want stands for an absent field.
func contains(have, want any) bool {
	switch w := want.(type) {
	case nil:
		return true
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			hv, present := h[k]
			if !present {
				if wv == nil {
					continue
				}
				return false
			}
			if !contains(hv, wv) {
				return false
			}
		}
		return true
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return false
		}
		for i := range w {
			if !contains(h[i], w[i]) {
				return false
			}
		}
		return true
	}
	if wn, ok := number(want); ok {
		hn, ok := number(have)
		return ok && hn == wn
	}
	return have == want
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}
