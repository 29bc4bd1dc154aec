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
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
)

func applyServiceAccount(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceAccountApplyConfiguration) (metav1.Object, error) {
	return c.Kube.CoreV1().ServiceAccounts(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
}

// Applied is one object as the API server stored it (or, in a dry run,
// would store it).
type Applied struct {
	Ref             string
	ResourceVersion string
	// Owned fingerprints flotilla's own managedFields entry (its fields and
	// the time it last changed them): unchanged by a no-op apply, whatever
	// controllers write to the object's status meanwhile.
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

// ApplyObjects server-side applies objs to c in order and stops at the first
// error. With c.DryRun the API server validates everything and stores
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
		if o.UpToDate(live) {
			// Nothing to write: a re-apply of an unchanged spec makes no calls
			// but reads.
			a := Applied{Ref: o.Ref(), ResourceVersion: live.GetResourceVersion(), Owned: ownedFingerprint(live)}
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
		a := Applied{Ref: o.Ref(), ResourceVersion: got.GetResourceVersion(), Owned: ownedFingerprint(got)}
		if c.DryRun {
			if a.Action, err = dryRunAction(live, got); err != nil {
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

// Result is what ApplyMesh did.
type Result struct {
	// Plans are the final plans, with every known address filled in.
	Plans []ClusterPlan
	// Addresses are the gateway addresses by cluster.
	Addresses map[string]gateways.Address
	// Applied are the objects as stored, by cluster.
	Applied map[string][]Applied
}

// ApplyMesh converges every cluster of the mesh: (1) namespaces with their
// network labels, (2) gateways and their Istio resources, (3) the wait for
// each gateway's address, (4) the Sail resources, those of primaries and
// control-plane clusters before those of the remotes and data-plane clusters
// that embed their addresses. clusters maps every member's name to its
// connection.
//
// With DryRun connections nothing persists, so no new address can appear:
// addresses already allocated are used and the others are PendingAddress.
func ApplyMesh(ctx context.Context, clusters map[string]*kube.Cluster, t federation.Topology, members []federation.Member, opts Options, progress func(string)) (*Result, error) {
	dryRun := false
	for _, m := range members {
		c := clusters[m.Name]
		if c == nil {
			return nil, fmt.Errorf("%s: no connection to the cluster", m.Name)
		}
		dryRun = dryRun || c.DryRun
	}
	first := opts
	first.AllowPendingAddress = true
	plans, err := Plan(t, members, first, nil)
	if err != nil {
		return nil, err
	}
	res := &Result{Addresses: map[string]gateways.Address{}, Applied: map[string][]Applied{}}
	// A dry run goes on past refused objects (ApplyObjects names them) so
	// that the plan covers every cluster; errors other than refusals stop it.
	var refused []error
	for _, p := range plans {
		c := clusters[p.Cluster]
		applied, err := ApplyObjects(ctx, c, append(append([]kube.Object(nil), p.Setup...), p.Gateways...), progress)
		res.Applied[p.Cluster] = append(res.Applied[p.Cluster], applied...)
		if err != nil && !(dryRun && onlyRefusals(applied, err)) {
			return res, err
		}
		if err != nil {
			refused = append(refused, err)
		}
	}
	addresses := map[string]string{}
	for _, p := range plans {
		if p.Gateway == nil {
			continue
		}
		c := clusters[p.Cluster]
		var addr gateways.Address
		if dryRun {
			a, ok, err := gateways.LookupAddress(ctx, c, p.Gateway.Namespace, p.Gateway.Name)
			if err != nil {
				return res, err
			}
			if !ok {
				continue
			}
			addr = a
		} else {
			a, err := gateways.WaitForAddress(ctx, c, p.Gateway.Namespace, p.Gateway.Name, opts.addressTimeout(), progress)
			if err != nil {
				return res, err
			}
			addr = a
		}
		res.Addresses[p.Cluster] = addr
		addresses[p.Cluster] = addr.Host
	}
	final := opts
	final.AllowPendingAddress = opts.AllowPendingAddress || dryRun
	if res.Plans, err = Plan(t, members, final, addresses); err != nil {
		return res, err
	}
	// Control planes first: their istiod serves the others.
	for _, servers := range []bool{true, false} {
		for _, p := range res.Plans {
			if isServer(p.Role) != servers {
				continue
			}
			if opts.BeforeControlPlane != nil {
				if err := opts.BeforeControlPlane(ctx, p.Cluster); err != nil {
					return res, err
				}
			}
			applied, err := ApplyObjects(ctx, clusters[p.Cluster], p.ControlPlane, progress)
			res.Applied[p.Cluster] = append(res.Applied[p.Cluster], applied...)
			if err != nil && !(dryRun && onlyRefusals(applied, err)) {
				return res, err
			}
			if err != nil {
				refused = append(refused, err)
			}
		}
	}
	return res, errors.Join(refused...)
}

// onlyRefusals reports whether err is nothing but the refusals recorded in
// applied (a dry run's invalid objects), not a failure that stopped the run.
func onlyRefusals(applied []Applied, err error) bool {
	n := 0
	for _, a := range applied {
		if a.Action == ActionInvalid {
			n++
		}
	}
	j, ok := err.(interface{ Unwrap() []error })
	return ok && n > 0 && len(j.Unwrap()) == n
}

func isServer(r federation.Role) bool {
	return r == federation.RolePrimary || r == federation.RoleControlPlane
}

// dryRunAction compares the live object with the dry-run result of applying
// over it. A no-op apply leaves flotilla's managedFields entry (fields and
// time) as it was; any change flotilla makes moves its time. The time has
// second granularity, so the objects themselves are compared too (without
// managedFields, resourceVersion and status, which controllers write): a
// change within the second of the last apply still shows.
func dryRunAction(live *unstructured.Unstructured, dry metav1.Object) (string, error) {
	if live == nil {
		return ActionCreate, nil
	}
	if ownedFingerprint(live) != ownedFingerprint(dry) {
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

func ownedFingerprint(obj metav1.Object) string {
	mf := kube.AppliedEntry(obj)
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
