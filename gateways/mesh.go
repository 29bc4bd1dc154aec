package gateways

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// ClusterPlan is everything one cluster needs, in apply order: Setup, then
// Gateways, then the wait for Gateway's address, then ControlPlane, then the
// wait for Gateway's pods to be injected. deploy
// plans the namespaces and the control plane and says which gateway the
// cluster runs; this package adds the gateway's objects.
type ClusterPlan struct {
	deploy.ClusterPlan
	// Gateways are the gateway workloads and the Istio resources that
	// configure them.
	Gateways []kube.Object
	// Gateway is the gateway whose address the mesh needs (status, remotes,
	// cross-network endpoints); nil when the cluster has none.
	Gateway *Gateway
}

// Objects are all the plan's objects in apply order.
func (p ClusterPlan) Objects() []kube.Object {
	out := append([]kube.Object(nil), p.Setup...)
	out = append(out, p.Gateways...)
	return append(out, p.ControlPlane...)
}

// Plan returns the plan of every cluster of the mesh, in spec order: the
// topology is compiled once (deploy.Plan), then each cluster's gateway is
// added. addresses holds the known gateway addresses by cluster (from
// WaitForAddress or LookupAddress); a fixed Exposure.Address of a non-
// LoadBalancer gateway needs no entry.
func Plan(l *deploy.Layout, opts deploy.Options, addresses map[string]string) ([]ClusterPlan, error) {
	plans, err := deploy.Plan(l, opts, addresses)
	out := make([]ClusterPlan, 0, len(plans))
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range plans {
		cp, err := withGateway(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, cp)
	}
	return out, errors.Join(errs...)
}

// PlanCluster returns the plan of the named cluster.
func PlanCluster(l *deploy.Layout, cluster string, opts deploy.Options, addresses map[string]string) (ClusterPlan, error) {
	p, err := deploy.PlanCluster(l, cluster, opts, addresses)
	if err != nil {
		return ClusterPlan{}, err
	}
	return withGateway(p)
}

// withGateway adds the gateway deploy's plan says the cluster runs: the
// east-west gateway (with the cross-network Gateway and istiod's exposure
// as the plan says), or a control-plane cluster's ingress in front of its
// external istiod.
func withGateway(p deploy.ClusterPlan) (ClusterPlan, error) {
	out := ClusterPlan{ClusterPlan: p}
	var g Gateway
	var extra []*unstructured.Unstructured
	switch p.GatewayKind {
	case deploy.NoGateway:
		return out, nil
	case deploy.IngressGateway:
		g = ControlPlaneIngress(p.Namespace, p.Exposure)
	case deploy.AmbientEastWestGateway:
		g = AmbientEastWest(p.Namespace, p.Network, p.Exposure)
	case deploy.EastWestGateway:
		g = EastWest(p.Namespace, p.Network, p.Exposure)
		if p.Role == deploy.RoleDataPlane {
			// Injected by the external istiod's revision, not the default one.
			g.Revision = deploy.ExternalIstiodName
		}
		if p.ExposesAPIServer {
			g.Ports = append(g.Ports, Port{deploy.PortAPIServerName, PortAPIServer})
		}
	default:
		return ClusterPlan{}, fmt.Errorf("%s: unknown gateway kind %q", p.Cluster, p.GatewayKind)
	}
	objs, err := g.Objects()
	if err != nil {
		return ClusterPlan{}, fmt.Errorf("%s: %w", p.Cluster, err)
	}
	out.Gateways = objs
	out.Gateway = &g
	switch p.GatewayKind {
	case deploy.IngressGateway:
		ext := p.ExternalNamespace
		// The guide creates istiod-service-account in the external
		// control plane's namespace before installing it.
		sa, err := kube.Typed(corev1ac.ServiceAccount("istiod-service-account", ext).WithLabels(kube.ManagedLabels()), applyServiceAccount)
		if err != nil {
			return ClusterPlan{}, fmt.Errorf("%s: %w", p.Cluster, err)
		}
		out.Gateways = append(out.Gateways, sa)
		extra = append(extra, ExternalIstiodGateway(ext), ExternalIstiodVirtualService(ext, deploy.ExternalIstiodName))
	case deploy.EastWestGateway:
		if p.CrossNetwork {
			extra = append(extra, CrossNetworkGateway(p.Namespace))
		}
		if p.ExposesIstiod {
			extra = append(extra, IstiodGateway(p.Namespace), IstiodVirtualService(p.Namespace))
		}
		if p.ExposesAPIServer {
			extra = append(extra, APIServerGateway(p.Namespace), APIServerVirtualService(p.Namespace))
		}
	}
	for _, u := range extra {
		out.Gateways = append(out.Gateways, kube.Custom(u))
	}
	return out, nil
}

func applyServiceAccount(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceAccountApplyConfiguration) (metav1.Object, error) {
	return c.Kube.CoreV1().ServiceAccounts(*ac.Namespace).Apply(ctx, ac, c.ApplyOptions())
}

// Result is what ApplyMesh did.
type Result struct {
	// Plans are the final plans, with every known address filled in.
	Plans []ClusterPlan
	// Addresses are the gateway addresses by cluster.
	Addresses map[string]Address
	// Applied are the objects as stored, by cluster.
	Applied map[string][]deploy.Applied
}

// ApplyMesh converges every cluster of the mesh: (1) namespaces with their
// network labels, (2) gateways and their Istio resources, (3) the wait for
// each gateway's address, (4) the Sail resources, those of primaries and
// control-plane clusters before those of the remotes and data-plane clusters
// that embed their addresses, each group followed by (5) the wait for its
// gateways' pods to be injected by their revision (WaitForInjection: the
// gateways were written before their revision's webhook existed, so a
// first install restarts them once it does). opts.BeforeControlPlanes runs
// between (3) and (4). Namespaces and Sail resources
// are written as kube.ManagerControlPlane, the gateway objects as
// kube.ManagerGateways. clusters maps every member's name to its connection.
//
// With DryRun connections nothing persists, so no new address can appear:
// addresses already allocated are used and the others are PendingAddress;
// and nothing waits for injection.
func ApplyMesh(ctx context.Context, clusters map[string]*kube.Cluster, l *deploy.Layout, opts deploy.Options, progress func(string)) (*Result, error) {
	return ApplyMeshScoped(ctx, clusters, l, opts, nil, progress)
}

// ApplyMeshScoped is ApplyMesh writing only into the clusters in scope (all
// when it is empty): a hub replica's share of the mesh. The other clusters
// are only read, for the gateway addresses the plans of those in scope
// embed (a remote's istiod address is its primary's gateway); one without
// an address yet fails the plan until its own apply allocates it.
func ApplyMeshScoped(ctx context.Context, clusters map[string]*kube.Cluster, l *deploy.Layout, opts deploy.Options, scope []string, progress func(string)) (*Result, error) {
	inScope := func(name string) bool { return len(scope) == 0 || slices.Contains(scope, name) }
	dryRun := false
	for _, m := range l.Clusters {
		c := clusters[m.Name]
		if c == nil {
			return nil, fmt.Errorf("%s: no connection to the cluster", m.Name)
		}
		dryRun = dryRun || c.DryRun
	}
	first := opts
	first.AllowPendingAddress = true
	plans, err := Plan(l, first, nil)
	if err != nil {
		return nil, err
	}
	res := &Result{Addresses: map[string]Address{}, Applied: map[string][]deploy.Applied{}}
	// A dry run goes on past refused objects (deploy.ApplyObjects names them) so
	// that the plan covers every cluster; errors other than refusals stop it.
	var refused []error
	for _, p := range plans {
		if !inScope(p.Cluster) {
			continue
		}
		c := clusters[p.Cluster]
		if p.GatewayKind == deploy.EastWestGateway || p.GatewayKind == deploy.AmbientEastWestGateway {
			// Before the new mode's gateway: istiod's ambient deployment
			// takes the classic gateway's name.
			ambient := p.GatewayKind == deploy.AmbientEastWestGateway
			gone, err := RetireOtherMode(ctx, c.As(kube.ManagerGateways), p.Namespace, ambient)
			for _, ref := range gone {
				if progress != nil {
					progress(fmt.Sprintf("%s: %s: deleted (the cluster's dataplane mode is now %s)", p.Cluster, ref, p.DataplaneMode))
				}
			}
			if err != nil {
				return res, err
			}
		}
		// The namespaces are the control plane's (they carry its network
		// label), the gateway objects the gateways'.
		for _, step := range []struct {
			manager string
			objs    []kube.Object
		}{{kube.ManagerControlPlane, p.Setup}, {kube.ManagerGateways, p.Gateways}} {
			applied, err := deploy.ApplyObjects(ctx, c.As(step.manager), step.objs, progress)
			res.Applied[p.Cluster] = append(res.Applied[p.Cluster], applied...)
			if err != nil && !(dryRun && onlyRefusals(applied, err)) {
				return res, err
			}
			if err != nil {
				refused = append(refused, err)
			}
		}
		if !p.ExposesAPIServer {
			gone, err := UnexposeAPIServer(ctx, c.As(kube.ManagerGateways), p.Namespace)
			for _, ref := range gone {
				if progress != nil {
					progress(fmt.Sprintf("%s: %s: deleted (the API server is no longer read through the gateway)", p.Cluster, ref))
				}
			}
			if err != nil {
				return res, err
			}
		}
	}
	addresses := map[string]string{}
	for _, p := range plans {
		// istiod makes an ambient gateway's Service, so it has no address
		// before the control plane runs; no Istio resource embeds it
		// (ambient has no remotes), so it is only looked up at the end.
		if p.Gateway == nil || p.Gateway.Ambient {
			continue
		}
		c := clusters[p.Cluster]
		var addr Address
		if dryRun || !inScope(p.Cluster) {
			a, ok, err := LookupAddress(ctx, c, p.Gateway.Namespace, p.Gateway.Name)
			if err != nil {
				return res, err
			}
			if !ok {
				continue
			}
			addr = a
		} else {
			a, err := WaitForAddress(ctx, c, p.Gateway.Namespace, p.Gateway.Name, opts.AddressWait(), progress)
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
	if res.Plans, err = Plan(l, final, addresses); err != nil {
		return res, err
	}
	if opts.BeforeControlPlanes != nil {
		if err := opts.BeforeControlPlanes(ctx); err != nil {
			return res, err
		}
	}
	// Control planes first: their istiod serves the others.
	for _, servers := range []bool{true, false} {
		for _, p := range res.Plans {
			if isServer(p.Role) != servers || !inScope(p.Cluster) {
				continue
			}
			if opts.BeforeControlPlane != nil {
				if err := opts.BeforeControlPlane(ctx, p.Cluster); err != nil {
					return res, err
				}
			}
			applied, err := deploy.ApplyObjects(ctx, clusters[p.Cluster].As(kube.ManagerControlPlane), p.ControlPlane, progress)
			res.Applied[p.Cluster] = append(res.Applied[p.Cluster], applied...)
			if err != nil && !(dryRun && onlyRefusals(applied, err)) {
				return res, err
			}
			if err != nil {
				refused = append(refused, err)
			}
		}
		// The gateways of this phase run in the mesh from now on: before the
		// next phase, whose remotes reach their istiod through them.
		if !dryRun {
			var mine []ClusterPlan
			for _, p := range res.Plans {
				if inScope(p.Cluster) {
					mine = append(mine, p)
				}
			}
			if err := waitInjected(ctx, clusters, mine, servers, opts, progress); err != nil {
				return res, err
			}
		}
	}
	for _, p := range res.Plans {
		if p.Gateway == nil || !p.Gateway.Ambient {
			continue
		}
		a, ok, err := LookupAddress(ctx, clusters[p.Cluster], p.Gateway.Namespace, p.Gateway.Name)
		if err != nil {
			return res, err
		}
		if ok {
			res.Addresses[p.Cluster] = a
		}
	}
	return res, errors.Join(refused...)
}

// waitInjected waits, cluster by cluster in parallel, for the gateway pods
// of the plans of one phase (servers or not) to be injected by their
// revision, restarting a gateway whose pods came before its revision's
// webhook (WaitForInjection).
func waitInjected(ctx context.Context, clusters map[string]*kube.Cluster, plans []ClusterPlan, servers bool, opts deploy.Options, progress func(string)) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	say := func(line string) {
		if progress != nil {
			// One line at a time, as from the rest of ApplyMesh.
			mu.Lock()
			defer mu.Unlock()
			progress(line)
		}
	}
	errs := make([]error, len(plans))
	for i, p := range plans {
		// istiod deploys an ambient gateway already injected.
		if isServer(p.Role) != servers || p.Gateway == nil || p.Gateway.Ambient {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = WaitForInjection(ctx, clusters[p.Cluster].As(kube.ManagerGateways), p.Gateway, opts.AddressWait(), say)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// onlyRefusals reports whether err is nothing but the refusals recorded in
// applied (a dry run's invalid objects), not a failure that stopped the run.
func onlyRefusals(applied []deploy.Applied, err error) bool {
	n := 0
	for _, a := range applied {
		if a.Action == deploy.ActionInvalid {
			n++
		}
	}
	j, ok := err.(interface{ Unwrap() []error })
	return ok && n > 0 && len(j.Unwrap()) == n
}

func isServer(r deploy.Role) bool {
	return r == deploy.RolePrimary || r == deploy.RoleControlPlane
}

// Render writes one file per cluster, DIR/<cluster>.yaml, holding every
// object of its plan in apply order, and returns the paths written.
func Render(dir string, plans []ClusterPlan) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var paths []string
	for _, p := range plans {
		data, err := deploy.RenderYAML(p.Objects())
		if err != nil {
			return paths, fmt.Errorf("%s: %w", p.Cluster, err)
		}
		path := filepath.Join(dir, p.Cluster+".yaml")
		// Applied by hand under flotilla's one manager of old: the next
		// flotilla apply hands the fields to its subsystems' managers.
		header := fmt.Sprintf("# flotilla: cluster %s, role %s. Apply with: kubectl apply --server-side --field-manager=%s -f %s\n",
			p.Cluster, p.Role, kube.FieldManager, filepath.Base(path))
		if p.Pending {
			header += fmt.Sprintf("# WARNING: the gateway address of %s was not known; %s stands in for it.\n", p.AddressOf, deploy.PendingAddress)
		}
		if err := os.WriteFile(path, append([]byte(header), data...), 0o644); err != nil {
			return paths, fmt.Errorf("%s: render: %w", p.Cluster, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
