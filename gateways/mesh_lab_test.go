package gateways

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// labClusters connects to every lab cluster; dryRun makes the connections
// server-side dry runs.
func labClusters(t *testing.T, dryRun bool) (*lab.Lab, map[string]*kube.Cluster) {
	t.Helper()
	l := testLab.Get(t)
	out := map[string]*kube.Cluster{}
	for _, lc := range l.Clusters() {
		c, err := lc.Connect()
		if err != nil {
			t.Fatal(err)
		}
		c.DryRun = dryRun
		out[lc.Name] = c
	}
	return l, out
}

var (
	istioGVK    = schema.GroupVersionKind{Group: "sailoperator.io", Version: "v1", Kind: "Istio"}
	istioCNIGVK = schema.GroupVersionKind{Group: "sailoperator.io", Version: "v1", Kind: "IstioCNI"}
	gatewayGVK  = schema.GroupVersionKind{Group: "networking.istio.io", Version: "v1", Kind: "Gateway"}
)

// resetSail deletes the cluster-scoped Sail resources a previous test left:
// their spec.namespace is immutable and each test uses its own namespaces.
func resetSail(t *testing.T, clusters map[string]*kube.Cluster) {
	t.Helper()
	ctx := context.Background()
	for _, c := range clusters {
		for _, x := range []struct {
			gvk  schema.GroupVersionKind
			name string
		}{{istioGVK, deploy.IstioName}, {istioGVK, deploy.ExternalIstiodName}, {istioCNIGVK, deploy.IstioCNIName}} {
			gvr, _, err := c.Resource(ctx, x.gvk)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Dynamic.Resource(gvr).Delete(ctx, x.name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatalf("%s: delete %s %s: %v", c.Name, x.gvk.Kind, x.name, err)
			}
		}
	}
}

// prefixed gives a test its own namespaces.
func prefixed(prefix string, opts deploy.Options) deploy.Options {
	opts.Namespace = prefix + "-system"
	opts.ExternalNamespace = prefix + "-external"
	opts.CNINamespace = prefix + "-cni"
	return opts
}

// get reads an object of the plan back from the cluster.
func get(ctx context.Context, t *testing.T, c *kube.Cluster, want *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	gvr, namespaced, err := c.Resource(ctx, want.GroupVersionKind())
	if err != nil {
		t.Fatal(err)
	}
	ri := c.Dynamic.Resource(gvr)
	var got *unstructured.Unstructured
	if namespaced {
		got, err = ri.Namespace(want.GetNamespace()).Get(ctx, want.GetName(), metav1.GetOptions{})
	} else {
		got, err = ri.Get(ctx, want.GetName(), metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("%s: read %s: %v", c.Name, kube.ObjectRef(want), err)
	}
	return got
}

// subset reports the first path where sent is not contained in stored: a
// field the API server pruned or changed.
func subset(path string, sent, stored any) string {
	switch s := sent.(type) {
	case map[string]any:
		m, ok := stored.(map[string]any)
		if !ok {
			return path
		}
		for k, v := range s {
			if p := subset(path+"."+k, v, m[k]); p != "" {
				return p
			}
		}
		return ""
	case []any:
		l, ok := stored.([]any)
		if !ok || len(l) != len(s) {
			return path
		}
		for i := range s {
			if p := subset(fmt.Sprintf("%s[%d]", path, i), s[i], l[i]); p != "" {
				return p
			}
		}
		return ""
	}
	if fmt.Sprint(sent) != fmt.Sprint(stored) {
		return path
	}
	return ""
}

// gatewayServers flattens a stored Gateway's servers.
func gatewayServers(u *unstructured.Unstructured) []string {
	ss, _, _ := unstructured.NestedSlice(u.Object, "spec", "servers")
	var out []string
	for _, s := range ss {
		m := s.(map[string]any)
		port, tls := m["port"].(map[string]any), m["tls"].(map[string]any)
		hosts := fmt.Sprint(m["hosts"])
		out = append(out, fmt.Sprintf("%v/%v/%v/%v/%s", port["number"], port["name"], port["protocol"], tls["mode"], hosts))
	}
	return out
}

func resourceVersions(res *Result) map[string]string {
	out := map[string]string{}
	for cluster, applied := range res.Applied {
		for _, a := range applied {
			out[cluster+": "+a.Ref] = a.ResourceVersion
		}
	}
	return out
}

func TestLabTopologies(t *testing.T) {
	tests := []struct {
		name     string
		prefix   string
		topology deploy.Topology
		members  []deploy.Member
		// gateways: cluster -> Gateway name -> servers
		wantGateways map[string]map[string][]string
		// wantGatewayAddress: clusters whose gateway must get an address
		wantGatewayAddress []string
		// pilotFrom: cluster -> cluster whose gateway address its Istio embeds
		pilotFrom map[string]string
	}{
		{
			name: "multi-primary on three networks", prefix: "mp", topology: deploy.MultiPrimary,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "n2"), member("north", "primary", "n3")},
			wantGateways: map[string]map[string][]string{
				"east":  {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
				"west":  {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
				"north": {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
			},
			wantGatewayAddress: []string{"east", "west", "north"},
		},
		{
			name: "primary-remote, one remote on another network, one on the primary's", prefix: "pr", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2"), member("north", "remote", "n1")},
			wantGateways: map[string]map[string][]string{
				"east": {
					"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"},
					"istiod-gateway":        {"15012/tls-istiod/tls/PASSTHROUGH/[*]", "15017/tls-istiodwebhook/tls/PASSTHROUGH/[*]"},
				},
				"west": {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
				// On a multi-network mesh every cluster with workloads has its
				// own east-west gateway, even on a network another cluster serves.
				"north": {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
			},
			wantGatewayAddress: []string{"east", "west", "north"},
			pilotFrom:          map[string]string{"west": "east", "north": "east"},
		},
		{
			name: "external control plane with two data-plane networks", prefix: "ecp", topology: deploy.ExternalControlPlane,
			members: []deploy.Member{member("east", "control-plane", "n0"), member("west", "data-plane", "n1"), member("north", "data-plane", "n2")},
			wantGateways: map[string]map[string][]string{
				"east":  {"external-istiod-gw": {"15012/tls-XDS/tls/PASSTHROUGH/[*]", "15017/tls-WEBHOOK/tls/PASSTHROUGH/[*]"}},
				"west":  {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
				"north": {"cross-network-gateway": {"15443/tls/TLS/AUTO_PASSTHROUGH/[*.local]"}},
			},
			wantGatewayAddress: []string{"east", "west", "north"},
			pilotFrom:          map[string]string{"west": "east", "north": "east", "east": "east"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, clusters := labClusters(t, false)
			resetSail(t, clusters)
			opts := prefixed(tt.prefix, deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
			var lines []string
			res, err := applyMesh(ctx, clusters, tt.topology, tt.members, opts, func(s string) { lines = append(lines, s) })
			if err != nil {
				t.Fatalf("ApplyMesh: %v\n%s", err, strings.Join(lines, "\n"))
			}

			t.Run("every object is stored as sent", func(t *testing.T) {
				for _, p := range res.Plans {
					for _, o := range p.Objects() {
						sent := o.Unstructured()
						got := get(ctx, t, clusters[p.Cluster], sent)
						delete(sent.Object, "metadata")
						if path := subset("", sent.Object, got.Object); path != "" {
							t.Errorf("%s: %s: field %s was pruned or changed by the API server", p.Cluster, o.Ref(), path)
						}
					}
				}
			})

			t.Run("gateways get addresses from the lab allocator", func(t *testing.T) {
				for _, name := range tt.wantGatewayAddress {
					p := planOf(t, res, name)
					svc, err := clusters[name].Kube.CoreV1().Services(p.Gateway.Namespace).Get(ctx, p.Gateway.Name, metav1.GetOptions{})
					if err != nil {
						t.Fatal(err)
					}
					ing := svc.Status.LoadBalancer.Ingress
					if len(ing) == 0 || ing[0].IP == "" || ing[0].IP != res.Addresses[name].Host {
						t.Errorf("%s: service ingress %v, ApplyMesh address %q", name, ing, res.Addresses[name].Host)
					}
				}
			})

			t.Run("remotes reach istiod at their control plane's gateway address", func(t *testing.T) {
				for name, from := range tt.pilotFrom {
					want := res.Addresses[from].Host
					p := planOf(t, res, name)
					for _, o := range p.ControlPlane {
						u := o.Unstructured()
						if u.GetKind() != "Istio" {
							continue
						}
						stored := get(ctx, t, clusters[name], u)
						path := []string{"spec", "values", "global", "remotePilotAddress"}
						wantValue := want
						if u.GetName() == deploy.ExternalIstiodName && p.Role == deploy.RoleControlPlane {
							path = []string{"spec", "values", "meshConfig", "defaultConfig", "discoveryAddress"}
							wantValue = want + ":15012"
						} else if u.GetName() == deploy.IstioName && p.Role == deploy.RoleControlPlane {
							continue
						}
						got, _, _ := unstructured.NestedString(stored.Object, path...)
						if want == "" || got != wantValue {
							t.Errorf("%s: Istio %s %s = %q, want %q (gateway address of %s)", name, u.GetName(), strings.Join(path[2:], "."), got, wantValue, from)
						}
					}
				}
			})

			t.Run("expected Gateways with exact ports, modes and hosts", func(t *testing.T) {
				for _, p := range res.Plans {
					c := clusters[p.Cluster]
					gvr, _, err := c.Resource(ctx, gatewayGVK)
					if err != nil {
						t.Fatal(err)
					}
					got := map[string][]string{}
					for _, ns := range []string{opts.ControlPlaneNamespace(), opts.ExternalIstiodNamespace()} {
						list, err := c.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
						if err != nil {
							t.Fatal(err)
						}
						for i := range list.Items {
							got[list.Items[i].GetName()] = gatewayServers(&list.Items[i])
						}
					}
					want := tt.wantGateways[p.Cluster]
					if want == nil {
						want = map[string][]string{}
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("%s: Gateways = %v, want %v", p.Cluster, got, want)
					}
				}
			})

			t.Run("control-plane namespaces carry the network label", func(t *testing.T) {
				for _, p := range res.Plans {
					ns, err := clusters[p.Cluster].Kube.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
					if err != nil {
						t.Fatal(err)
					}
					if got := ns.Labels[NetworkLabel]; got != p.Network {
						t.Errorf("%s: namespace %s network label %q, want %q", p.Cluster, p.Namespace, got, p.Network)
					}
				}
			})

			t.Run("every object reads as up to date: a re-apply writes nothing", func(t *testing.T) {
				for _, p := range res.Plans {
					for _, o := range p.Objects() {
						live, err := o.Get(ctx, clusters[p.Cluster])
						if err != nil {
							t.Fatal(err)
						}
						if !o.UpToDate(live, managerOf(p, o)) {
							t.Errorf("%s: %s is not up to date right after the apply: it would be written again", p.Cluster, o.Ref())
						}
					}
				}
			})

			t.Run("a second apply changes nothing", func(t *testing.T) {
				assertNoChange(ctx, t, clusters, res.Plans, func() (*Result, error) {
					return applyMesh(ctx, clusters, tt.topology, tt.members, opts, nil)
				})
			})
		})
	}
}

func planOf(t *testing.T, res *Result, cluster string) ClusterPlan {
	t.Helper()
	for _, p := range res.Plans {
		if p.Cluster == cluster {
			return p
		}
	}
	t.Fatalf("no plan for %s", cluster)
	return ClusterPlan{}
}

func TestLabDryRun(t *testing.T) {
	ctx := context.Background()
	_, clusters := labClusters(t, false)
	resetSail(t, clusters)
	_, dry := labClusters(t, true)
	members := []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}

	t.Run("fresh clusters: nothing persists", func(t *testing.T) {
		opts := prefixed("dry", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
		res, err := applyMesh(ctx, dry, deploy.PrimaryRemote, members, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		var validated, skipped int
		for _, p := range res.Plans {
			for _, o := range p.Objects() {
				u := o.Unstructured()
				gvr, namespaced, err := clusters[p.Cluster].Resource(ctx, u.GroupVersionKind())
				if err != nil {
					t.Fatal(err)
				}
				ri := clusters[p.Cluster].Dynamic.Resource(gvr)
				if namespaced {
					_, err = ri.Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
				} else {
					_, err = ri.Get(ctx, u.GetName(), metav1.GetOptions{})
				}
				if !apierrors.IsNotFound(err) {
					t.Errorf("%s: %s exists after a dry run (err %v)", p.Cluster, o.Ref(), err)
				}
			}
			if p.Cluster == "west" && !p.Pending {
				t.Errorf("west: remotePilotAddress should be pending in a dry run of a first install")
			}
		}
		for _, applied := range res.Applied {
			for _, a := range applied {
				if a.Skipped != "" {
					skipped++
				} else {
					validated++
				}
			}
		}
		// Namespaces and the cluster-scoped Sail resources are validated; the
		// objects inside not-yet-existing namespaces cannot be.
		if validated == 0 || skipped == 0 {
			t.Errorf("validated %d, skipped %d objects; want both > 0", validated, skipped)
		}
	})

	t.Run("existing install: a changed spec is validated, not stored", func(t *testing.T) {
		opts := prefixed("dry2", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})
		real, err := applyMesh(ctx, clusters, deploy.PrimaryRemote, members, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		changed := opts
		changed.Values = map[string]any{"global": map[string]any{"logging": map[string]any{"level": "default:debug"}}}
		before := snapshot(ctx, t, clusters, real.Plans)
		res, err := applyMesh(ctx, dry, deploy.PrimaryRemote, members, changed, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, applied := range res.Applied {
			for _, a := range applied {
				if a.Skipped != "" {
					t.Errorf("%s skipped: %s", a.Ref, a.Skipped)
				}
			}
		}
		if p := planOf(t, res, "west"); p.Pending {
			t.Error("west: a dry run over an existing install should use the allocated address")
		}
		stored := get(ctx, t, clusters["east"], planOf(t, real, "east").ControlPlane[1].Unstructured())
		if _, found, _ := unstructured.NestedFieldNoCopy(stored.Object, "spec", "values", "global", "logging"); found {
			t.Error("east: dry run stored its change")
		}
		// flotilla's own field-manager entry records every write it makes.
		after := snapshot(ctx, t, clusters, real.Plans)
		for ref, b := range before {
			if after[ref].entry != b.entry {
				t.Errorf("%s: flotilla's managed fields changed in a dry run:\n%s\n%s", ref, b.entry, after[ref].entry)
			}
		}
		assertNoChange(ctx, t, clusters, real.Plans, func() (*Result, error) {
			return applyMesh(ctx, clusters, deploy.PrimaryRemote, members, opts, nil)
		})
	})
}

type stamp struct {
	rv string
	// entry is flotilla's managedFields entry: when it last wrote, and what
	// it owns.
	entry string
}

func snapshot(ctx context.Context, t *testing.T, clusters map[string]*kube.Cluster, plans []ClusterPlan) map[string]stamp {
	t.Helper()
	out := map[string]stamp{}
	for _, p := range plans {
		for _, o := range p.Objects() {
			got := get(ctx, t, clusters[p.Cluster], o.Unstructured())
			st := stamp{rv: got.GetResourceVersion()}
			if m := flotillaEntry(got); m != nil {
				st.entry = m.Time.String() + " " + string(m.FieldsV1.Raw)
			}
			out[p.Cluster+": "+o.Ref()] = st
		}
	}
	return out
}

// assertNoChange applies again and checks that no resourceVersion moved.
// Controllers (deployment, disruption, HPA, the lab's load balancer) also
// write some of these objects; when a resourceVersion moved but flotilla's
// managed-fields entry did not, another writer raced the comparison and it
// is repeated.
func assertNoChange(ctx context.Context, t *testing.T, clusters map[string]*kube.Cluster, plans []ClusterPlan, apply func() (*Result, error)) {
	t.Helper()
	var moved []string
	for attempt := 0; attempt < 10; attempt++ {
		before := snapshot(ctx, t, clusters, plans)
		res, err := apply()
		if err != nil {
			t.Fatal(err)
		}
		got := resourceVersions(res)
		if len(got) != len(before) {
			t.Fatalf("applied %d objects, plan has %d", len(got), len(before))
		}
		moved = moved[:0]
		after := snapshot(ctx, t, clusters, plans)
		for ref, b := range before {
			if got[ref] == b.rv {
				continue
			}
			if after[ref].entry != b.entry {
				t.Fatalf("%s: a second apply rewrote flotilla's fields (resourceVersion %s -> %s)", ref, b.rv, got[ref])
			}
			moved = append(moved, ref)
		}
		if len(moved) == 0 {
			return
		}
		time.Sleep(time.Second)
	}
	t.Errorf("resourceVersions kept moving under other writers: %v", moved)
}

// project keeps of stored only the fields shape has: what an apply of shape
// decides, without what the API server allocates (clusterIP, node ports,
// defaults).
func project(stored, shape any) any {
	switch sh := shape.(type) {
	case map[string]any:
		m, ok := stored.(map[string]any)
		if !ok {
			return stored
		}
		out := map[string]any{}
		for k, v := range sh {
			if sv, ok := m[k]; ok {
				out[k] = project(sv, v)
			}
		}
		return out
	case []any:
		l, ok := stored.([]any)
		if !ok || len(l) != len(sh) {
			return stored
		}
		out := make([]any, len(l))
		for i := range l {
			out[i] = project(l[i], sh[i])
		}
		return out
	}
	return fmt.Sprint(stored)
}

// applied is what an apply of sent decided on the stored object: the fields
// sent, as stored, and the fields the flotilla manager owns.
func applied(stored, sent *unstructured.Unstructured) map[string]any {
	owned := ""
	if m := flotillaEntry(stored); m != nil {
		owned = string(m.FieldsV1.Raw)
	}
	return map[string]any{"fields": project(stored.Object, sent.Object), "owned": owned}
}

// flotillaEntry is the apply entry of flotilla's manager on u: the one
// manager of old when it has one (a render applied by hand), else the
// subsystem's that ApplyMesh writes as.
func flotillaEntry(u metav1.Object) *metav1.ManagedFieldsEntry {
	for _, m := range append([]string{kube.FieldManager}, kube.Managers()...) {
		if e := kube.AppliedEntry(u, m); e != nil && e.FieldsV1 != nil {
			return e
		}
	}
	return nil
}

// managerOf is the field manager ApplyMesh writes o of p as.
func managerOf(p ClusterPlan, o kube.Object) string {
	for _, g := range p.Gateways {
		if g.Ref() == o.Ref() {
			return kube.ManagerGateways
		}
	}
	return kube.ManagerControlPlane
}

func managers(u *unstructured.Unstructured) []string {
	var out []string
	for _, m := range u.GetManagedFields() {
		if m.Operation == metav1.ManagedFieldsOperationApply {
			out = append(out, m.Manager)
		}
	}
	sort.Strings(out)
	return out
}

func TestLabRenderApply(t *testing.T) {
	ctx := context.Background()
	l, clusters := labClusters(t, false)
	resetSail(t, clusters)
	members := []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")}
	opts := prefixed("rnd", deploy.Options{MeshID: "mesh1", Version: "1.30.3"})

	// The flotilla path: apply, and remember every object as stored.
	res, err := applyMesh(ctx, clusters, deploy.PrimaryRemote, members, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for k, v := range res.Addresses {
		addrs[k] = v.Host
	}
	plans, err := planMesh(deploy.PrimaryRemote, members, opts, addrs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]any{}
	for _, p := range plans {
		for _, o := range p.Objects() {
			want[p.Cluster+": "+o.Ref()] = applied(get(ctx, t, clusters[p.Cluster], o.Unstructured()), o.Unstructured())
		}
	}

	// Remove everything but the namespaces, then apply the rendered files
	// with kubectl: the same objects must come back.
	for _, p := range plans {
		c := clusters[p.Cluster]
		for _, o := range append(append([]kube.Object(nil), p.Gateways...), p.ControlPlane...) {
			u := o.Unstructured()
			gvr, namespaced, err := c.Resource(ctx, u.GroupVersionKind())
			if err != nil {
				t.Fatal(err)
			}
			ri := c.Dynamic.Resource(gvr)
			propagation := metav1.DeletePropagationBackground
			del := metav1.DeleteOptions{PropagationPolicy: &propagation}
			if namespaced {
				err = ri.Namespace(u.GetNamespace()).Delete(ctx, u.GetName(), del)
			} else {
				err = ri.Delete(ctx, u.GetName(), del)
			}
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatalf("%s: delete %s: %v", c.Name, o.Ref(), err)
			}
		}
		waitGone(ctx, t, c, p)
	}

	dir := t.TempDir()
	paths, err := Render(dir, plans)
	if err != nil {
		t.Fatal(err)
	}
	kubectl := l.Bin("kubectl")
	for i, p := range plans {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", l.Kubeconfig, "--context", p.Cluster,
			"apply", "--server-side", "--field-manager="+kube.FieldManager, "-f", paths[i]).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: kubectl apply --server-side -f %s: %v\n%s", p.Cluster, filepath.Base(paths[i]), err, out)
		}
	}
	for _, p := range plans {
		for _, o := range p.Objects() {
			got := get(ctx, t, clusters[p.Cluster], o.Unstructured())
			key := p.Cluster + ": " + o.Ref()
			if a := applied(got, o.Unstructured()); !reflect.DeepEqual(a, want[key]) {
				t.Errorf("%s differs after kubectl apply of the render:\n got %v\nwant %v", key, a, want[key])
			}
			// The namespaces were kept: the control plane's entry stays
			// beside the hand-applied one, which its next apply takes over.
			want := []string{kube.FieldManager}
			if o.Unstructured().GetKind() == "Namespace" {
				want = []string{kube.FieldManager, kube.ManagerControlPlane}
			}
			if m := managers(got); !reflect.DeepEqual(m, want) {
				t.Errorf("%s: apply managers %v, want %v", key, m, want)
			}
		}
	}
}

// waitGone waits until the deleted gateway and control-plane objects of p are
// gone.
func waitGone(ctx context.Context, t *testing.T, c *kube.Cluster, p ClusterPlan) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for _, o := range append(append([]kube.Object(nil), p.Gateways...), p.ControlPlane...) {
		u := o.Unstructured()
		gvr, namespaced, err := c.Resource(ctx, u.GroupVersionKind())
		if err != nil {
			t.Fatal(err)
		}
		for {
			ri := c.Dynamic.Resource(gvr)
			if namespaced {
				_, err = ri.Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
			} else {
				_, err = ri.Get(ctx, u.GetName(), metav1.GetOptions{})
			}
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s still exists after delete (err %v)", c.Name, o.Ref(), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func TestLabBadInput(t *testing.T) {
	ctx := context.Background()
	_, clusters := labClusters(t, false)
	opts := prefixed("bad", deploy.Options{MeshID: "mesh1", Version: "1.30.3", NoCNI: true, AddressTimeout: 3 * time.Second})
	tests := []struct {
		name     string
		topology deploy.Topology
		members  []deploy.Member
		opts     deploy.Options
		wantErr  string
		// wantNothingWritten: validation fails before any write
		wantNothingWritten bool
	}{
		{
			name: "unknown topology", topology: "hub-and-spoke",
			members: []deploy.Member{member("east", "primary", "n1")}, opts: opts,
			wantErr: `unknown topology "hub-and-spoke"`, wantNothingWritten: true,
		},
		{
			name: "remote with no primary", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "remote", "n1"), member("west", "remote", "n2")}, opts: opts,
			wantErr: "cluster east: role remote needs a primary cluster in the mesh, and there is none", wantNothingWritten: true,
		},
		{
			name: "networks named for some clusters only", topology: deploy.MultiPrimary,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "primary", "")}, opts: opts,
			wantErr: "name a network and west do not", wantNothingWritten: true,
		},
		{
			// A ClusterIP gateway without a fixed address can never be
			// reached from another cluster: refused before anything is
			// written rather than waited for. (The wait's own timeout is
			// tested in package )
			name: "gateway that can never get an address", topology: deploy.PrimaryRemote,
			members: []deploy.Member{member("east", "primary", "n1"), member("west", "remote", "n2")},
			opts: func() deploy.Options {
				o := opts
				o.Exposure = map[string]Exposure{"east": {Type: "ClusterIP"}}
				return o
			}(),
			wantErr: "east: gateway: service type ClusterIP needs a fixed address", wantNothingWritten: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := applyMesh(ctx, clusters, tt.topology, tt.members, tt.opts, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ApplyMesh() = %v, want error containing %q", err, tt.wantErr)
			}
			if tt.wantNothingWritten {
				for name, c := range clusters {
					if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, tt.opts.ControlPlaneNamespace(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
						t.Errorf("%s: namespace %s exists after rejected input (err %v)", name, tt.opts.ControlPlaneNamespace(), err)
					}
				}
			}
		})
	}
}
