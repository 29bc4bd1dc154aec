package kube

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Handler reconciles one object a Watch saw; retry asks for the object
// again later, with backoff (a second to a minute).
type Handler func(ctx context.Context, obj *unstructured.Unstructured) (retry bool)

// Watch runs handle for every object of gvr in namespace ("" for all) as it
// appears or changes, one at a time, until ctx ends. An object deleted
// before its turn is dropped.
func (c *Cluster) Watch(ctx context.Context, gvr schema.GroupVersionResource, namespace string, handle Handler) error {
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(c.Dynamic, 10*time.Minute, namespace, nil)
	inf := f.ForResource(gvr).Informer()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, time.Minute))
	defer q.ShutDown()
	add := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			q.Add(key)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }}); err != nil {
		return fmt.Errorf("%s: watch %s: %w", c.Name, gvr.Resource, err)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	for {
		key, quit := q.Get()
		if quit {
			return nil
		}
		obj, ok, err := inf.GetStore().GetByKey(key)
		u, isU := obj.(*unstructured.Unstructured)
		switch {
		case err != nil || !ok || !isU:
			q.Forget(key)
		case handle(ctx, u):
			q.AddRateLimited(key)
		default:
			q.Forget(key)
		}
		q.Done(key)
	}
}
