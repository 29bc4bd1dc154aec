package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Istio's names for gateway injection, as its injector reads and writes
// them (the lab stands in for it, so it spells them itself).
const (
	injectLabel         = "sidecar.istio.io/inject"
	injectTemplates     = "inject.istio.io/templates"
	sidecarStatus       = "sidecar.istio.io/status"
	revisionLabel       = "istio.io/rev"
	defaultRevisionName = "default"
)

var sailIstioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}

// runGatewayInjection stands in for Istio's injection of gateway pods in a
// lab without Istio (no Options.RealIstio): a pod that asks for the
// `gateway` injection template is marked injected (sidecar.istio.io/status,
// with its revision) once the cluster has the Sail Istio resource of that
// revision, as the revision's webhook would inject it. The revision is the
// pod's istio.io/rev label, else its namespace's, else default; a Sail
// Istio resource's revision is its name (InPlace updates). Unlike the real
// webhook it also marks a pod created before the control plane: the lab
// has no webhook to restart it through, and flotilla's apply waits for
// its gateways to be injected. Sidecar pods are the emulator's to mark.
func runGatewayInjection(ctx context.Context, c *Cluster, logw io.Writer) {
	cs := c.Client()
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		fmt.Fprintf(logw, "lab: %s: gateway injection: %v\n", c.Name, err)
		return
	}
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	f := informers.NewSharedInformerFactoryWithOptions(cs, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = injectLabel + "=true" }))
	inf := f.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if k, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(k)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	go func() { <-ctx.Done(); queue.ShutDown() }()
	for {
		key, quit := queue.Get()
		if quit {
			return
		}
		wait, err := injectGateway(ctx, cs, dyn, inf.GetIndexer(), key)
		switch {
		case err != nil && ctx.Err() == nil:
			fmt.Fprintf(logw, "lab: %s: gateway injection of pod %s: %v\n", c.Name, key, err)
			queue.AddRateLimited(key)
		case wait:
			// No control plane of its revision yet: look again shortly.
			queue.Forget(key)
			queue.AddAfter(key, 500*time.Millisecond)
		default:
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

// injectGateway marks the pod at key injected when it is due; wait says
// its revision has no control plane yet.
func injectGateway(ctx context.Context, cs kubernetes.Interface, dyn dynamic.Interface, pods cache.Indexer, key string) (wait bool, err error) {
	obj, ok, err := pods.GetByKey(key)
	if err != nil || !ok {
		return false, err
	}
	p := obj.(*corev1.Pod)
	if p.DeletionTimestamp != nil || p.Annotations[sidecarStatus] != "" || !strings.Contains(p.Annotations[injectTemplates], "gateway") {
		return false, nil
	}
	rev := p.Labels[revisionLabel]
	if rev == "" {
		ns, err := cs.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		rev = ns.Labels[revisionLabel]
	}
	if rev == "" {
		rev = defaultRevisionName
	}
	if _, err := dyn.Resource(sailIstioGVR).Get(ctx, rev, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return true, nil
	} else if err != nil {
		return false, err
	}
	status, _ := json.Marshal(map[string]any{"containers": []string{"istio-proxy"}, "revision": rev, "templates": []string{"gateway"}})
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{sidecarStatus: string(status)}}})
	_, err = cs.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return false, err
}
