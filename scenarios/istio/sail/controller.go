package sail

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Sail's resources.
var (
	IstioGVR    = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
	IstioCNIGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istiocnis"}
	ZTunnelGVR  = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "ztunnels"}
)

// ChartZTunnel is the ztunnel chart; Sail names its release "ztunnel".
const (
	ChartZTunnel   = "ztunnel"
	releaseZTunnel = "ztunnel"
)

// Finalizer is Sail's: the releases go before the resource does.
const Finalizer = "sailoperator.io/sail-operator"

// Controller reconciles Istio, IstioCNI and ZTunnel resources of one cluster.
type Controller struct {
	// Cluster names the cluster in errors and logs.
	Cluster string
	// OperatorNamespace holds the default revision's base release, as the
	// namespace Sail runs in does.
	OperatorNamespace string
	Charts            *Charts
	Kube              kubernetes.Interface
	Dynamic           dynamic.Interface
	Log               *slog.Logger

	queue   workqueue.TypedRateLimitingInterface[key]
	listers map[string]cache.GenericLister
}

type key struct {
	kind string // "Istio", "IstioCNI" or "ZTunnel"
	name string
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.queue = workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[key](500*time.Millisecond, 30*time.Second))
	defer c.queue.ShutDown()
	if err := c.ensureOperatorNamespace(ctx); err != nil {
		return err
	}
	df := dynamicinformer.NewDynamicSharedInformerFactory(c.Dynamic, 10*time.Minute)
	c.listers = map[string]cache.GenericLister{}
	for kind, gvr := range map[string]schema.GroupVersionResource{"Istio": IstioGVR, "IstioCNI": IstioCNIGVR, "ZTunnel": ZTunnelGVR} {
		inf := df.ForResource(gvr)
		c.listers[kind] = inf.Lister()
		enqueue := func(obj any) {
			if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				c.queue.Add(key{kind: kind, name: k})
			}
		}
		if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
		}); err != nil {
			return err
		}
	}
	// An istiod Deployment turning available changes its Istio's Ready
	// condition: look again at every Istio (there are few).
	kf := informers.NewSharedInformerFactoryWithOptions(c.Kube, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "app=istiod" }))
	deploys := kf.Apps().V1().Deployments().Informer()
	if _, err := deploys.AddEventHandler(cache.ResourceEventHandlerFuncs{
		// A ZTunnel copies values from the Istio it targets, and its
		// revision follows that Istio's: look again at ZTunnels too.
		AddFunc:    func(any) { c.enqueueAll("Istio"); c.enqueueAll("ZTunnel") },
		UpdateFunc: func(any, any) { c.enqueueAll("Istio"); c.enqueueAll("ZTunnel") },
		DeleteFunc: func(any) { c.enqueueAll("Istio"); c.enqueueAll("ZTunnel") },
	}); err != nil {
		return err
	}
	// A ztunnel DaemonSet's pods turning ready changes its ZTunnel's Ready.
	zf := informers.NewSharedInformerFactoryWithOptions(c.Kube, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "app.kubernetes.io/name=ztunnel" }))
	if _, err := zf.Apps().V1().DaemonSets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.enqueueAll("ZTunnel") },
		UpdateFunc: func(any, any) { c.enqueueAll("ZTunnel") },
		DeleteFunc: func(any) { c.enqueueAll("ZTunnel") },
	}); err != nil {
		return err
	}
	df.Start(ctx.Done())
	kf.Start(ctx.Done())
	zf.Start(ctx.Done())
	df.WaitForCacheSync(ctx.Done())
	kf.WaitForCacheSync(ctx.Done())
	zf.WaitForCacheSync(ctx.Done())
	go func() { <-ctx.Done(); c.queue.ShutDown() }()
	for {
		k, quit := c.queue.Get()
		if quit {
			return nil
		}
		err := c.reconcile(ctx, k)
		if err != nil && ctx.Err() == nil {
			c.Log.Warn("reconcile", "cluster", c.Cluster, "kind", k.kind, "name", k.name, "error", err)
			c.queue.AddRateLimited(k)
		} else {
			c.queue.Forget(k)
		}
		c.queue.Done(k)
	}
}

func (c *Controller) enqueueAll(kind string) {
	objs, err := c.listers[kind].List(labels.Everything())
	if err != nil {
		return
	}
	for _, o := range objs {
		if m, err := metaOf(o); err == nil {
			c.queue.Add(key{kind: kind, name: m.GetName()})
		}
	}
}

func (c *Controller) ensureOperatorNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.OperatorNamespace}}
	_, err := c.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: create operator namespace %s: %w", c.Cluster, c.OperatorNamespace, err)
	}
	return nil
}

func (c *Controller) gvr(kind string) schema.GroupVersionResource {
	switch kind {
	case "IstioCNI":
		return IstioCNIGVR
	case "ZTunnel":
		return ZTunnelGVR
	}
	return IstioGVR
}

func (c *Controller) reconcile(ctx context.Context, k key) error {
	obj, err := c.listers[k.kind].Get(k.name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("%s %s: unexpected type %T", k.kind, k.name, obj)
	}
	u = u.DeepCopy()
	res := c.client(k.kind)
	if u.GetDeletionTimestamp() != nil {
		if !slices.Contains(u.GetFinalizers(), Finalizer) {
			return nil
		}
		if err := c.uninstall(k.kind, u); err != nil {
			return fmt.Errorf("%s: %s %s: %w", c.Cluster, k.kind, k.name, err)
		}
		u.SetFinalizers(slices.DeleteFunc(u.GetFinalizers(), func(f string) bool { return f == Finalizer }))
		_, err := res.Update(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	if !slices.Contains(u.GetFinalizers(), Finalizer) {
		u.SetFinalizers(append(u.GetFinalizers(), Finalizer))
		if u, err = res.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("%s: add finalizer to %s %s: %w", c.Cluster, k.kind, k.name, err)
		}
	}
	st := newStatus(u)
	// Releases are applied when the spec changed or the last attempt
	// failed; a readiness change only refreshes the status.
	if st.observedGeneration != u.GetGeneration() || !st.reconciled() {
		applyErr := c.install(ctx, k.kind, u, st)
		st.observedGeneration = u.GetGeneration()
		if applyErr != nil {
			st.set("Reconciled", false, "ReconcileError", applyErr.Error())
			st.set("Ready", false, "ReconcileError", "cannot determine readiness due to reconciliation error")
			st.state = "ReconcileError"
			if err := c.writeStatus(ctx, res, u, st); err != nil {
				return err
			}
			return fmt.Errorf("%s: %s %s: %w", c.Cluster, k.kind, k.name, applyErr)
		}
		st.set("Reconciled", true, "Reconciled", "")
	}
	switch k.kind {
	case "Istio":
		if err := c.readiness(ctx, u, st); err != nil {
			return err
		}
	case "ZTunnel":
		if err := c.ztunnelReadiness(ctx, u, st); err != nil {
			return err
		}
	default:
		st.set("Ready", true, "Healthy", "")
		st.state = "Healthy"
	}
	return c.writeStatus(ctx, res, u, st)
}

func (c *Controller) client(kind string) dynamic.ResourceInterface {
	return c.Dynamic.Resource(c.gvr(kind))
}

// install applies the resource's releases: for an Istio, <revision>-istiod
// in spec.namespace and, for the default revision, <revision>-base in the
// operator's namespace; for an IstioCNI, istio-cni in spec.namespace; for a
// ZTunnel, ztunnel in spec.namespace.
func (c *Controller) install(ctx context.Context, kind string, u *unstructured.Unstructured, st *status) error {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	ns, _, _ := unstructured.NestedString(spec, "namespace")
	if ns == "" {
		return fmt.Errorf("spec.namespace not set")
	}
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %q doesn't exist", ns)
		}
		return err
	}
	profile, _, _ := unstructured.NestedString(spec, "profile")
	user, _, _ := unstructured.NestedMap(spec, "values")
	owner := &metav1.OwnerReference{
		APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Name: u.GetName(), UID: u.GetUID(),
		Controller: ptr(true), BlockOwnerDeletion: ptr(true),
	}
	switch kind {
	case "IstioCNI":
		values, err := CNIValues(profile, user)
		if err != nil {
			return err
		}
		_, err = c.Charts.Apply(ctx, ChartCNI, ns, releaseCNI, values, owner)
		return err
	case "ZTunnel":
		if u.GetName() != "default" {
			// Sail's ZTunnel is a singleton named default.
			return fmt.Errorf("metadata.name must be 'default'")
		}
		target, err := c.ztunnelTarget(spec)
		if err != nil {
			return err
		}
		values, err := ZTunnelValues(user, target)
		if err != nil {
			return err
		}
		rel, err := c.Charts.Apply(ctx, ChartZTunnel, ns, releaseZTunnel, values, owner)
		if err != nil {
			return err
		}
		c.Log.Info("release", "cluster", c.Cluster, "release", rel.Namespace+"/"+rel.Name, "version", rel.Version, "status", rel.Status)
		return nil
	}
	strategy, _, _ := unstructured.NestedString(spec, "updateStrategy", "type")
	version, _, _ := unstructured.NestedString(spec, "version")
	rev := RevisionName(u.GetName(), strategy, version)
	st.activeRevision = rev
	values, err := IstioValues(rev, ns, profile, user)
	if err != nil {
		return err
	}
	rel, err := c.Charts.Apply(ctx, ChartIstiod, ns, ReleaseName(rev, "istiod"), values, owner)
	if err != nil {
		return err
	}
	c.Log.Info("release", "cluster", c.Cluster, "release", rel.Namespace+"/"+rel.Name, "version", rel.Version, "status", rel.Status)
	if rev == DefaultRevision {
		rel, err := c.Charts.Apply(ctx, ChartBase, c.OperatorNamespace, ReleaseName(rev, "base"), values, owner)
		if err != nil {
			return err
		}
		c.Log.Info("release", "cluster", c.Cluster, "release", rel.Namespace+"/"+rel.Name, "version", rel.Version, "status", rel.Status)
	}
	return nil
}

func (c *Controller) uninstall(kind string, u *unstructured.Unstructured) error {
	ns, _, _ := unstructured.NestedString(u.Object, "spec", "namespace")
	switch kind {
	case "IstioCNI":
		return c.Charts.Uninstall(ns, releaseCNI)
	case "ZTunnel":
		return c.Charts.Uninstall(ns, releaseZTunnel)
	}
	strategy, _, _ := unstructured.NestedString(u.Object, "spec", "updateStrategy", "type")
	version, _, _ := unstructured.NestedString(u.Object, "spec", "version")
	rev := RevisionName(u.GetName(), strategy, version)
	if err := c.Charts.Uninstall(ns, ReleaseName(rev, "istiod")); err != nil {
		return err
	}
	if rev == DefaultRevision {
		return c.Charts.Uninstall(c.OperatorNamespace, ReleaseName(rev, "base"))
	}
	return nil
}

// readiness: an Istio is Ready when every istiod Deployment of its release
// has an available replica; one whose release runs no istiod (profile
// remote) is Ready once reconciled.
func (c *Controller) readiness(ctx context.Context, u *unstructured.Unstructured, st *status) error {
	if !st.reconciled() {
		return nil
	}
	ns, _, _ := unstructured.NestedString(u.Object, "spec", "namespace")
	rev := st.activeRevision
	if rev == "" {
		strategy, _, _ := unstructured.NestedString(u.Object, "spec", "updateStrategy", "type")
		version, _, _ := unstructured.NestedString(u.Object, "spec", "version")
		rev = RevisionName(u.GetName(), strategy, version)
		st.activeRevision = rev
	}
	list, err := c.Kube.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{
		LabelSelector: "app=istiod,release=" + ReleaseName(rev, "istiod"),
	})
	if err != nil {
		return fmt.Errorf("%s: list istiod deployments in %s: %w", c.Cluster, ns, err)
	}
	ready := true
	for _, d := range list.Items {
		if !available(&d) {
			ready = false
		}
	}
	st.revisionsTotal, st.revisionsReady = 1, 0
	if ready {
		st.revisionsReady = 1
		st.set("Ready", true, "Healthy", "")
		st.state = "Healthy"
	} else {
		st.set("Ready", false, "IstiodNotReady", "istiod Deployment is not ready")
		st.state = "IstiodNotReady"
	}
	return nil
}

// ztunnelTarget reads the values a ZTunnel copies from the Istio its
// spec.targetRef names; none without a targetRef. Sail resolves an Istio to
// its active revision; an IstioRevision target is not played by the lab.
func (c *Controller) ztunnelTarget(spec map[string]any) (map[string]any, error) {
	kind, _, _ := unstructured.NestedString(spec, "targetRef", "kind")
	name, _, _ := unstructured.NestedString(spec, "targetRef", "name")
	switch kind {
	case "":
		return nil, nil
	case "Istio":
	default:
		return nil, fmt.Errorf("spec.targetRef: kind %s is not played by the lab (only Istio)", kind)
	}
	obj, err := c.listers["Istio"].Get(name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("spec.targetRef: Istio %s not found", name)
	}
	if err != nil {
		return nil, err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("istio %s: unexpected type %T", name, obj)
	}
	return ztunnelTarget(u), nil
}

// ztunnelReadiness: a ZTunnel is Ready when its DaemonSet has pods
// scheduled and every one of them is ready, as Sail's ZTunnel controller
// decides (the lab's kwok pods turn ready once the emulator plays their
// data plane).
func (c *Controller) ztunnelReadiness(ctx context.Context, u *unstructured.Unstructured, st *status) error {
	if !st.reconciled() {
		return nil
	}
	ns, _, _ := unstructured.NestedString(u.Object, "spec", "namespace")
	name := "ztunnel"
	if rn, ok, _ := unstructured.NestedString(u.Object, "spec", "values", "ztunnel", "resourceName"); ok && rn != "" {
		name = rn
	}
	ds, err := c.Kube.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		st.set("Ready", false, "DaemonSetNotReady", "ztunnel DaemonSet not found")
		st.state = "DaemonSetNotReady"
	case err != nil:
		return fmt.Errorf("%s: read DaemonSet %s/%s: %w", c.Cluster, ns, name, err)
	case ds.Status.CurrentNumberScheduled == 0:
		st.set("Ready", false, "DaemonSetNotReady", "no ztunnel pods are currently scheduled")
		st.state = "DaemonSetNotReady"
	case ds.Status.NumberReady < ds.Status.CurrentNumberScheduled:
		st.set("Ready", false, "DaemonSetNotReady", "not all ztunnel pods are ready")
		st.state = "DaemonSetNotReady"
	default:
		st.set("Ready", true, "Healthy", "")
		st.state = "Healthy"
	}
	return nil
}

func available(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == "True" && d.Status.AvailableReplicas > 0
		}
	}
	return false
}

func (c *Controller) writeStatus(ctx context.Context, res dynamic.ResourceInterface, u *unstructured.Unstructured, st *status) error {
	if !st.changed() {
		return nil
	}
	u = u.DeepCopy()
	if err := unstructured.SetNestedField(u.Object, st.object(), "status"); err != nil {
		return err
	}
	_, err := res.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		// Gone, or changed meanwhile: the informer brings it back.
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: write status of %s %s: %w", c.Cluster, u.GetKind(), u.GetName(), err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// metaOf returns an object's metadata.
func metaOf(o any) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("unexpected type %T", o)
	}
	return m, nil
}
