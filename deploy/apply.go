package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Applied is one object as the API server stored it (or, in a dry run,
// would store it).
type Applied struct {
	Ref             string
	ResourceVersion string
	// Owned fingerprints the managedFields entry of the manager that
	// applied it (its fields and the time it last changed them): unchanged
	// by a no-op apply, whatever controllers write to the object's status
	// meanwhile.
	Owned string
	// Skipped says why a dry run could not validate the object: its
	// namespace does not exist yet, and a dry run creates none.
	Skipped string
	// Action is, in a dry run, what the apply would do to the object:
	// ActionCreate, ActionUpdate, ActionNone, or ActionInvalid when the API
	// server refused it (Error says why). Empty in a real apply.
	Action string
	Error  string
}

// What a dry run says an apply would do to an object.
const (
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionNone   = "none"
	// ActionInvalid: the API server would refuse the apply.
	ActionInvalid = "invalid"
)

// ApplyObjects server-side applies objs to c in order, as c's field manager
// (Cluster.As), and stops at the first error. With c.DryRun the API server validates everything and stores
// nothing; objects in namespaces that do not exist yet cannot be validated
// then and are reported as Skipped. A dry run goes on past an object the API
// server refuses (ActionInvalid), so that a plan shows every change, and
// returns the refusals joined.
func ApplyObjects(ctx context.Context, c *kube.Cluster, objs []kube.Object, progress func(string)) ([]Applied, error) {
	out := make([]Applied, 0, len(objs))
	var refused []error
	missing := map[string]bool{}
	say := func(format string, args ...any) {
		if progress != nil {
			progress(c.Name + ": " + fmt.Sprintf(format, args...))
		}
	}
	for _, o := range objs {
		ns := o.Unstructured().GetNamespace()
		if c.DryRun && ns != "" {
			if _, seen := missing[ns]; !seen {
				_, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				if err != nil && !apierrors.IsNotFound(err) {
					return out, fmt.Errorf("%s: read namespace %s: %w", c.Name, ns, err)
				}
				missing[ns] = apierrors.IsNotFound(err)
			}
			if missing[ns] {
				a := Applied{Ref: o.Ref(), Skipped: fmt.Sprintf("namespace %s does not exist yet", ns), Action: ActionCreate}
				out = append(out, a)
				say("not validated (dry run): %s: %s", a.Ref, a.Skipped)
				continue
			}
		}
		live, err := o.Get(ctx, c)
		if err != nil {
			return out, err
		}
		if o.UpToDate(live, c.Manager()) {
			// Nothing to write: a re-apply of an unchanged spec makes no calls
			// but reads (and the takeover from the legacy manager, when due).
			if err := o.TakeOver(ctx, c, live); err != nil {
				return out, err
			}
			a := Applied{Ref: o.Ref(), ResourceVersion: live.GetResourceVersion(), Owned: ownedFingerprint(live, c.Manager())}
			if c.DryRun {
				a.Action = ActionNone
			}
			out = append(out, a)
			say("unchanged %s", o.Ref())
			continue
		}
		got, err := o.Apply(ctx, c)
		if err != nil && c.DryRun {
			refused = append(refused, err)
			out = append(out, Applied{Ref: o.Ref(), Action: ActionInvalid, Error: err.Error()})
			say("refused (dry run) %s: %v", o.Ref(), err)
			continue
		}
		if err != nil {
			return out, err
		}
		a := Applied{Ref: o.Ref(), ResourceVersion: got.GetResourceVersion(), Owned: ownedFingerprint(got, c.Manager())}
		if c.DryRun {
			if a.Action, err = dryRunAction(live, got, c.Manager()); err != nil {
				return out, fmt.Errorf("%s: compare %s: %w", c.Name, a.Ref, err)
			}
		}
		out = append(out, a)
		if c.DryRun {
			say("validated (dry run) %s: %s", o.Ref(), a.Action)
		} else {
			say("applied %s", o.Ref())
		}
	}
	return out, errors.Join(refused...)
}

// dryRunAction compares the live object with the dry-run result of applying
// over it as manager. A no-op apply leaves manager's managedFields entry
// (fields and time) as it was; any change it makes moves its time. The time has
// second granularity, so the objects themselves are compared too (without
// managedFields, resourceVersion and status, which controllers write): a
// change within the second of the last apply still shows.
func dryRunAction(live *unstructured.Unstructured, dry metav1.Object, manager string) (string, error) {
	if live == nil {
		return ActionCreate, nil
	}
	if ownedFingerprint(live, manager) != ownedFingerprint(dry, manager) {
		return ActionUpdate, nil
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(dry)
	if err != nil {
		return "", err
	}
	if !equality.Semantic.DeepEqual(withoutVolatile(live.Object), withoutVolatile(m)) {
		return ActionUpdate, nil
	}
	return ActionNone, nil
}

// withoutVolatile is obj without what a no-op apply may legitimately see differ.
func withoutVolatile(obj map[string]any) map[string]any {
	u := (&unstructured.Unstructured{Object: obj}).DeepCopy()
	// Typed results decode without apiVersion and kind.
	delete(u.Object, "apiVersion")
	delete(u.Object, "kind")
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "managedFields")
	unstructured.RemoveNestedField(u.Object, "metadata", "resourceVersion")
	return u.Object
}

func ownedFingerprint(obj metav1.Object, manager string) string {
	mf := kube.AppliedEntry(obj, manager)
	if mf == nil {
		return ""
	}
	sum := sha256.New()
	if mf.Time != nil {
		sum.Write([]byte(mf.Time.UTC().String()))
	}
	if mf.FieldsV1 != nil {
		sum.Write(mf.FieldsV1.Raw)
	}
	return hex.EncodeToString(sum.Sum(nil))
}
