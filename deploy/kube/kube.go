// Package kube connects flotilla to member clusters and writes to them through
// server-side apply, so that a second apply of the same objects is a no-op
// and ownership of every field is visible in managedFields. Each subsystem
// writes under a field manager of its own (managers.go), so that a namespace
// several of them write keeps every subsystem's fields.
package kube

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a connection to one member cluster.
type Cluster struct {
	// Name is the cluster's name in the mesh spec; every error names it.
	Name string
	// Config is the REST config the clients were built from.
	Config *rest.Config
	// Kube is the typed clientset; reads go through it.
	Kube kubernetes.Interface
	// Dynamic writes objects that have no typed client here (Sail, Istio, cert-manager CRs).
	Dynamic dynamic.Interface
	// DryRun makes every write a server-side dry run: validated, never persisted.
	DryRun bool

	// manager is the field manager of every write; "" is FieldManager.
	// Subsystems set theirs with As.
	manager string
	mapper  *restmapper.DeferredDiscoveryRESTMapper
}

// As returns a shallow copy of c (same clients) whose writes are made by
// field manager m, one of the subsystem managers (managers.go).
func (c *Cluster) As(m string) *Cluster {
	cp := *c
	cp.manager = m
	return &cp
}

// Manager is the field manager c writes as.
func (c *Cluster) Manager() string {
	if c.manager == "" {
		return FieldManager
	}
	return c.manager
}

// Connect builds the clients for the cluster named name from cfg.
func Connect(name string, cfg *rest.Config) (*Cluster, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// client-go's default of 5 QPS makes a many-object apply crawl.
		cfg.QPS, cfg.Burst = 50, 100
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: kubernetes client: %w", name, err)
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: dynamic client: %w", name, err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: discovery client: %w", name, err)
	}
	return &Cluster{
		Name:    name,
		Config:  cfg,
		Kube:    kc,
		Dynamic: dc,
		mapper:  restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
	}, nil
}

// FromKubeconfig connects to the cluster behind kubeContext in the kubeconfig
// at path ("" means the default loading rules: $KUBECONFIG, then ~/.kube/config).
func FromKubeconfig(name, path, kubeContext string) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: kubeconfig context %q: %w", name, kubeContext, err)
	}
	return Connect(name, cfg)
}

// ApplyOptions are the options of every typed server-side apply.
func (c *Cluster) ApplyOptions() metav1.ApplyOptions {
	o := metav1.ApplyOptions{FieldManager: c.Manager(), Force: true}
	if c.DryRun {
		o.DryRun = []string{metav1.DryRunAll}
	}
	return o
}

// CreateOptions are the options of the few writes that cannot be applies
// (TokenRequest, TokenReview).
func (c *Cluster) CreateOptions() metav1.CreateOptions {
	o := metav1.CreateOptions{FieldManager: c.Manager()}
	if c.DryRun {
		o.DryRun = []string{metav1.DryRunAll}
	}
	return o
}

// DeleteOptions are the options of every delete.
func (c *Cluster) DeleteOptions() metav1.DeleteOptions {
	o := metav1.DeleteOptions{}
	if c.DryRun {
		o.DryRun = []string{metav1.DryRunAll}
	}
	return o
}

// Resource maps a group/version/kind to its resource and whether it is
// namespaced. Discovery does not heed a context (its client has a timeout
// of its own), so the lookup runs apart and Resource returns once ctx is
// done: a hub shutting down must not wait on an API server that hangs.
func (c *Cluster) Resource(ctx context.Context, gvk schema.GroupVersionKind) (schema.GroupVersionResource, bool, error) {
	if err := ctx.Err(); err != nil {
		return schema.GroupVersionResource{}, false, fmt.Errorf("%s: look up the API for %s: %w", c.Name, gvk, err)
	}
	type mapping struct {
		m   *meta.RESTMapping
		err error
	}
	done := make(chan mapping, 1)
	go func() {
		m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			// A CRD installed after the first lookup is unknown to the cached mapper.
			c.mapper.Reset()
			m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		done <- mapping{m, err}
	}()
	var r mapping
	select {
	case <-ctx.Done():
		return schema.GroupVersionResource{}, false, fmt.Errorf("%s: look up the API for %s: %w", c.Name, gvk, ctx.Err())
	case r = <-done:
	}
	if r.err != nil {
		return schema.GroupVersionResource{}, false, fmt.Errorf("%s: no API for %s (is its CRD installed?): %w", c.Name, gvk, r.err)
	}
	return r.m.Resource, r.m.Scope.Name() == "namespace", nil
}

// Apply server-side applies obj, of any kind, as c's manager, takes it
// over from FieldManager where that is due (TakeOver), and returns the
// object as stored.
func (c *Cluster) Apply(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvr, namespaced, err := c.Resource(ctx, obj.GroupVersionKind())
	if err != nil {
		return nil, err
	}
	out, err := c.apply(ctx, gvr, namespaced, obj)
	if err != nil {
		return nil, err
	}
	return out, c.TakeOver(ctx, gvr, out)
}

// apply is Apply without the takeover.
func (c *Cluster) apply(ctx context.Context, gvr schema.GroupVersionResource, namespaced bool, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ref := ObjectRef(obj)
	data, err := json.Marshal(obj.Object)
	if err != nil {
		return nil, fmt.Errorf("%s: encode %s: %w", c.Name, ref, err)
	}
	opts := metav1.PatchOptions{FieldManager: c.Manager(), Force: ptrTrue()}
	if c.DryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = c.Dynamic.Resource(gvr)
	if namespaced {
		ri = c.Dynamic.Resource(gvr).Namespace(obj.GetNamespace())
	}
	out, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: apply %s: %w", c.Name, ref, err)
	}
	return out, nil
}

// ObjectRef names an object the way errors and progress lines do:
// kind namespace/name, or kind name for cluster-scoped objects.
func ObjectRef(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", obj.GetKind(), ns, obj.GetName())
	}
	return fmt.Sprintf("%s %s", obj.GetKind(), obj.GetName())
}

func ptrTrue() *bool { t := true; return &t }
