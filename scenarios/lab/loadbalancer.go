package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// runLoadBalancer gives every LoadBalancer Service of the cluster a unique
// ingress IP from the cluster's pool, the way MetalLB or a cloud would, and
// keeps it for the Service's lifetime. A Service asking for a pool address
// through spec.loadBalancerIP gets that one when it is free.
func runLoadBalancer(ctx context.Context, c *Cluster, logw io.Writer) {
	cs := c.Client()
	a := &allocator{cluster: c, cs: cs, byKey: map[string]string{}, used: map[string]bool{}, log: logw,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	f := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	inf := f.Core().V1().Services().Informer()
	enqueue := func(obj any) {
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(k)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, o any) { enqueue(o) },
		DeleteFunc: enqueue,
	})
	a.lister = inf.GetIndexer()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	// Addresses already handed out (a restarted allocator) stay taken.
	for _, o := range a.lister.List() {
		s := o.(*corev1.Service)
		for _, in := range s.Status.LoadBalancer.Ingress {
			k, _ := cache.MetaNamespaceKeyFunc(s)
			a.byKey[k], a.used[in.IP] = in.IP, true
		}
	}
	go func() { <-ctx.Done(); a.queue.ShutDown() }()
	for a.next(ctx) {
	}
}

type allocator struct {
	cluster *Cluster
	cs      kubernetes.Interface
	lister  cache.Indexer
	queue   workqueue.TypedRateLimitingInterface[string]
	log     io.Writer

	mu    sync.Mutex
	byKey map[string]string
	used  map[string]bool
}

func (a *allocator) next(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(a.log, "lab: %s: load balancer for %s: %v\n", a.cluster.Name, key, err)
		}
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

func (a *allocator) sync(ctx context.Context, key string) error {
	obj, exists, err := a.lister.GetByKey(key)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !exists || obj.(*corev1.Service).Spec.Type != corev1.ServiceTypeLoadBalancer {
		if ip, ok := a.byKey[key]; ok {
			delete(a.used, ip)
			delete(a.byKey, key)
		}
		if !exists {
			return nil
		}
		svc := obj.(*corev1.Service)
		if len(svc.Status.LoadBalancer.Ingress) == 0 {
			return nil
		}
		// No longer a LoadBalancer: the address goes away, as in a cloud.
		svc = svc.DeepCopy()
		svc.Status.LoadBalancer = corev1.LoadBalancerStatus{}
		_, err := a.cs.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, svc, metav1UpdateOptions)
		return err
	}
	svc := obj.(*corev1.Service)
	ip, ok := a.byKey[key]
	if !ok {
		if ip, err = a.pick(svc); err != nil {
			return err
		}
		a.byKey[key], a.used[ip] = ip, true
	}
	if len(svc.Status.LoadBalancer.Ingress) == 1 && svc.Status.LoadBalancer.Ingress[0].IP == ip {
		return nil
	}
	svc = svc.DeepCopy()
	vip := corev1.LoadBalancerIPModeVIP
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip, IPMode: &vip}}
	_, err = a.cs.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, svc, metav1UpdateOptions)
	return err
}

func (a *allocator) pick(svc *corev1.Service) (string, error) {
	_, pool, _ := net.ParseCIDR(a.cluster.LoadBalancerCIDR)
	if want := svc.Spec.LoadBalancerIP; want != "" {
		if ip := net.ParseIP(want); ip != nil && pool.Contains(ip) && !a.used[want] {
			return want, nil
		}
	}
	for n := lbFirst; n <= lbEnd; n++ {
		ip := lbIP(pool, n).String()
		if !a.used[ip] {
			return ip, nil
		}
	}
	return "", fmt.Errorf("address pool %s exhausted", a.cluster.LoadBalancerCIDR)
}

var metav1UpdateOptions = metav1.UpdateOptions{FieldManager: "flotilla-lab"}
