package federation

import (
	"context"
	"errors"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewShared("east", "west", "north")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// labMesh is a mesh over the lab's clusters with the given members.
func labMesh(t *testing.T, topo Topology, members ...Member) Mesh {
	t.Helper()
	l := testLab.Get(t)
	m := Mesh{Topology: topo}
	for _, mem := range members {
		lc := l.Cluster(mem.Name)
		if lc == nil {
			t.Fatalf("no lab cluster %s", mem.Name)
		}
		kc, err := lc.Connect()
		if err != nil {
			t.Fatal(err)
		}
		m.Clusters = append(m.Clusters, Cluster{Member: mem, Kube: kc})
		seedEndpoints(t, lc)
	}
	return m
}

var seeded sync.Map

// seedEndpoints gives a cluster a Service and an EndpointSlice for readers
// to list: the lab's API servers publish no endpoints of their own.
func seedEndpoints(t *testing.T, lc *lab.Cluster) {
	t.Helper()
	if _, done := seeded.LoadOrStore(lc.Name, true); done {
		return
	}
	ctx, c := context.Background(), lc.Client()
	const ns = "fed-fixture"
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_, err = c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "helloworld"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 5000}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	port, name := int32(5000), "http"
	_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "helloworld-1", Labels: map[string]string{discoveryv1.LabelServiceName: "helloworld"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.200.0.1"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// eventuallyRefused waits until cluster c's TokenReview refuses token: the
// API server's authenticator reads accounts through a cache.
func eventuallyRefused(t *testing.T, ctx context.Context, c *kube.Cluster, a Account, token string) {
	t.Helper()
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		ok, err := Accepted(ctx, c, a, token)
		return !ok, err
	})
	if err != nil {
		t.Errorf("%s: old token still accepted: %v", c.Name, err)
		return
	}
	t.Logf("%s: old token refused after %v", c.Name, time.Since(start).Round(time.Millisecond))
}

func admin(t *testing.T, name string) kubernetes.Interface {
	t.Helper()
	return testLab.Get(t).Cluster(name).Client()
}

// secretsIn lists every multicluster secret in the namespaces, per cluster,
// as "cluster:ns/name->target".
func secretsIn(t *testing.T, ctx context.Context, namespaces ...string) []string {
	t.Helper()
	var out []string
	for _, lc := range testLab.Get(t).Clusters() {
		for _, ns := range namespaces {
			list, err := lc.Client().CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: MultiClusterLabel + "=true"})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range list.Items {
				out = append(out, lc.Name+":"+s.Namespace+"/"+s.Name+"->"+s.Annotations[ClusterAnnotation])
			}
		}
	}
	sort.Strings(out)
	return out
}

// readerClient builds a client from the kubeconfig stored in a link's secret, used as-is.
func readerClient(t *testing.T, ctx context.Context, lr LinkResult) kubernetes.Interface {
	t.Helper()
	s, err := admin(t, lr.Reader).CoreV1().Secrets(lr.Namespace).Get(ctx, lr.Secret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: %v", lr.Link, err)
	}
	key := SecretKey(lr.Kind, lr.Target)
	if len(s.Data) != 1 || s.Data[key] == nil {
		t.Fatalf("%s: secret data keys %v, want exactly %q", lr.Link, keys(s.Data), key)
	}
	if s.Annotations[ClusterAnnotation] != lr.Target || s.Labels[MultiClusterLabel] != "true" {
		t.Fatalf("%s: secret labels %v annotations %v", lr.Link, s.Labels, s.Annotations)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(s.Data[key])
	if err != nil {
		t.Fatalf("%s: kubeconfig: %v", lr.Link, err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// assertReads checks that a secret's kubeconfig reads services and
// endpointslices in its target and is refused what the role does not grant.
func assertReads(t *testing.T, ctx context.Context, lr LinkResult, writer bool) {
	t.Helper()
	c := readerClient(t, ctx, lr)
	svcs, err := c.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil || len(svcs.Items) == 0 {
		t.Errorf("%s: list services: %d items, err %v", lr.Link, len(svcs.Items), err)
	}
	eps, err := c.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil || len(eps.Items) == 0 {
		t.Errorf("%s: list endpointslices: %d items, err %v", lr.Link, len(eps.Items), err)
	}
	// The kubernetes service proves the secret reads its target, not its reader.
	ns, err := c.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	want, _ := admin(t, lr.Target).CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil || want == nil || ns.UID != want.UID {
		t.Errorf("%s: the kubeconfig does not read cluster %s (err %v)", lr.Link, lr.Target, err)
	}

	refused := []struct {
		what string
		err  error
	}{
		{"create pod", func() error {
			_, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "intruder"},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			}, metav1.CreateOptions{})
			return err
		}()},
		{"delete namespace", c.CoreV1().Namespaces().Delete(ctx, "default", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})},
		{"delete endpointslices", c.DiscoveryV1().EndpointSlices("default").DeleteCollection(ctx, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}, metav1.ListOptions{})},
		{"list roles", func() error { _, err := c.RbacV1().Roles("").List(ctx, metav1.ListOptions{}); return err }()},
		{"delete secret", c.CoreV1().Secrets("default").Delete(ctx, "intruder", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})},
	}
	if lr.Kind != LinkConfig {
		// An external istiod's gateway deployment controller manages
		// services and service accounts on its config cluster, as the
		// chart's istiod-gateway-controller role allows; readers do not.
		refused = append(refused, []struct {
			what string
			err  error
		}{
			{"delete service", c.CoreV1().Services("default").Delete(ctx, "kubernetes", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})},
			{"list serviceaccounts", func() error { _, err := c.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{}); return err }()},
		}...)
	}
	if !writer {
		refused = append(refused, struct {
			what string
			err  error
		}{"create configmap", func() error {
			_, err := c.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}},
				metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}()})
	}
	for _, r := range refused {
		if !apierrors.IsForbidden(r.err) {
			t.Errorf("%s: %s: err = %v, want Forbidden", lr.Link, r.what, r.err)
		}
	}
}

// versions records the resourceVersion of everything federation wrote in the namespaces.
func versions(t *testing.T, ctx context.Context, namespaces ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sel := metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + ManagedByValue}
	for _, lc := range testLab.Get(t).Clusters() {
		c := lc.Client()
		for _, ns := range namespaces {
			ss, err := c.CoreV1().Secrets(ns).List(ctx, sel)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range ss.Items {
				out[lc.Name+" secret "+ns+"/"+s.Name] = s.ResourceVersion
			}
			sas, err := c.CoreV1().ServiceAccounts(ns).List(ctx, sel)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sas.Items {
				out[lc.Name+" sa "+ns+"/"+s.Name] = s.ResourceVersion
			}
			if n, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
				out[lc.Name+" namespace "+ns] = n.ResourceVersion
			}
		}
		crs, err := c.RbacV1().ClusterRoles().List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range crs.Items {
			out[lc.Name+" clusterrole "+r.Name] = r.ResourceVersion
		}
		crbs, err := c.RbacV1().ClusterRoleBindings().List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range crbs.Items {
			out[lc.Name+" clusterrolebinding "+r.Name] = r.ResourceVersion
		}
	}
	return out
}

func mustReconcile(t *testing.T, ctx context.Context, m Mesh, known []Credential, o Options) *Result {
	t.Helper()
	res, err := Reconcile(ctx, m, known, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Err(); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	return res
}

// TestLabTopologies federates the three lab clusters in each topology in
// turn, in the same namespaces, so each step also proves the previous
// topology's secrets are pruned.
func TestLabTopologies(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "topo-system", ExternalNamespace: "topo-external", AllowLoopback: true}
	steps := []struct {
		name    string
		topo    Topology
		members []Member
		secrets []string
		cps     map[string]string // namespace annotation wanted per cluster
	}{
		{
			name: "multi-primary", topo: MultiPrimary,
			members: []Member{{Name: "east", Network: "n1"}, {Name: "west", Network: "n2"}, {Name: "north", Network: "n1"}},
			secrets: []string{
				"east:topo-system/istio-remote-secret-north->north", "east:topo-system/istio-remote-secret-west->west",
				"north:topo-system/istio-remote-secret-east->east", "north:topo-system/istio-remote-secret-west->west",
				"west:topo-system/istio-remote-secret-east->east", "west:topo-system/istio-remote-secret-north->north",
			},
		},
		{
			name: "primary-remote", topo: PrimaryRemote,
			members: []Member{{Name: "east", Role: RolePrimary}, {Name: "west", Role: RoleRemote}, {Name: "north", Role: RoleRemote}},
			secrets: []string{"east:topo-system/istio-remote-secret-north->north", "east:topo-system/istio-remote-secret-west->west"},
			cps:     map[string]string{"west": "east", "north": "east"},
		},
		{
			name: "external control plane", topo: ExternalControlPlane,
			members: []Member{{Name: "east", Role: RoleControlPlane}, {Name: "west", Role: RoleDataPlane}, {Name: "north", Role: RoleDataPlane}},
			secrets: []string{"east:topo-external/istio-kubeconfig->west", "east:topo-external/istio-remote-secret-north->north"},
		},
		{
			name: "multi-primary again", topo: MultiPrimary,
			members: []Member{{Name: "east"}, {Name: "west"}, {Name: "north"}},
			secrets: []string{
				"east:topo-system/istio-remote-secret-north->north", "east:topo-system/istio-remote-secret-west->west",
				"north:topo-system/istio-remote-secret-east->east", "north:topo-system/istio-remote-secret-west->west",
				"west:topo-system/istio-remote-secret-east->east", "west:topo-system/istio-remote-secret-north->north",
			},
		},
	}
	var creds []Credential
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			m := labMesh(t, st.topo, st.members...)
			res := mustReconcile(t, ctx, m, creds, o)
			creds = res.Credentials

			if got := secretsIn(t, ctx, o.Namespace, o.ExternalNamespace); strings.Join(got, " ") != strings.Join(st.secrets, " ") {
				t.Errorf("secrets present:\n  %v\nwant exactly:\n  %v", got, st.secrets)
			}
			roles := map[string]Role{}
			for _, mem := range normalize(st.members) {
				roles[mem.Name] = mem.Role
			}
			for _, lr := range res.Links {
				if lr.Action == Deleted {
					continue
				}
				writer := roles[lr.Target] == RoleRemote || roles[lr.Target] == RoleDataPlane
				assertReads(t, ctx, lr, writer || lr.Kind == LinkConfig)
			}
			for cluster, primary := range st.cps {
				ns, err := admin(t, cluster).CoreV1().Namespaces().Get(ctx, o.Namespace, metav1.GetOptions{})
				if err != nil || ns.Annotations[ControlPlaneClustersAnnotation] != primary {
					t.Errorf("%s: namespace %s annotation %s = %q (err %v), want %q", cluster, o.Namespace,
						ControlPlaneClustersAnnotation, ns.Annotations[ControlPlaneClustersAnnotation], err, primary)
				}
			}

			before := versions(t, ctx, o.Namespace, o.ExternalNamespace)
			again := mustReconcile(t, ctx, m, creds, o)
			for _, lr := range again.Links {
				if lr.Action != Unchanged {
					t.Errorf("re-run: %s %s/%s %s, want unchanged", lr.Link, lr.Namespace, lr.Secret, lr.Action)
				}
			}
			for _, tr := range again.Targets {
				if tr.Renewed != ReasonNone {
					t.Errorf("re-run: %s credential renewed (%s), want the stored one kept", tr.Cluster, tr.Renewed)
				}
			}
			after := versions(t, ctx, o.Namespace, o.ExternalNamespace)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("re-run changed %s: resourceVersion %s -> %s", k, v, after[k])
				}
			}
			if len(after) != len(before) {
				t.Errorf("re-run changed the set of objects: %d -> %d", len(before), len(after))
			}
		})
	}
}

// TestLabRenewal replaces a reader's token when the stored one expires, when
// its account is deleted, and in legacy mode when its token secret is deleted.
func TestLabRenewal(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "renew-system", AllowLoopback: true}
	m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
	res := mustReconcile(t, ctx, m, nil, o)
	creds := res.Credentials
	westLink := func(r *Result) LinkResult {
		for _, lr := range r.Links {
			if lr.Reader == "east" && lr.Target == "west" {
				return lr
			}
		}
		t.Fatal("no east -> west link")
		return LinkResult{}
	}
	westCred := func(cs []Credential) Credential {
		for _, c := range cs {
			if c.Cluster == "west" {
				return c
			}
		}
		t.Fatal("no credential for west")
		return Credential{}
	}
	westAcct := Account{Namespace: o.Namespace, Name: ReaderServiceAccount}
	westKube, err := testLab.Get(t).Cluster("west").Connect()
	if err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name   string
		opts   func(Options) Options
		break_ func(t *testing.T, creds []Credential) []Credential
		reason RenewalReason
		all    bool // every cluster's credential is renewed, not only west's
		// mayKeepToken accepts a renewal that yields the very same token.
		mayKeepToken bool
	}{
		{
			name: "stored expiry in the past",
			break_: func(t *testing.T, creds []Credential) []Credential {
				out := append([]Credential(nil), creds...)
				for i := range out {
					if out[i].Cluster == "west" {
						out[i].Expiry = time.Now().Add(-time.Minute)
					}
				}
				return out
			},
			reason: ReasonExpired,
		},
		{
			name: "reader account deleted",
			break_: func(t *testing.T, creds []Credential) []Credential {
				if err := admin(t, "west").CoreV1().ServiceAccounts(o.Namespace).Delete(ctx, ReaderServiceAccount, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				return creds
			},
			reason: ReasonRejected,
		},
		{
			name: "switch to a legacy token secret",
			opts: func(o Options) Options { o.Token.Legacy = true; return o },
			break_: func(t *testing.T, creds []Credential) []Credential {
				return creds
			},
			reason: ReasonKind, all: true,
		},
		{
			name: "legacy token secret deleted",
			opts: func(o Options) Options { o.Token.Legacy = true; return o },
			break_: func(t *testing.T, creds []Credential) []Credential {
				err := admin(t, "west").CoreV1().Secrets(o.Namespace).Delete(ctx, LegacyTokenSecretName(ReaderServiceAccount), metav1.DeleteOptions{})
				if err != nil {
					t.Fatal(err)
				}
				// Deleting the secret revokes its token...
				eventuallyRefused(t, ctx, westKube, westAcct, westCred(creds).Token)
				return creds
			},
			// ...and the secret recreated under the same name carries a token
			// with the same claims (legacy tokens have no iat or exp), which
			// with an RSA key is the same token: the remote secret may stay as
			// it was, and works again.
			reason: ReasonRejected, mayKeepToken: true,
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			so := o
			if st.opts != nil {
				so = st.opts(o)
			}
			old := westCred(creds)
			stored := st.break_(t, creds)
			res := mustReconcile(t, ctx, m, stored, so)
			for _, tr := range res.Targets {
				want := ReasonNone
				if tr.Cluster == "west" || st.all {
					want = st.reason
				}
				if tr.Renewed != want {
					t.Errorf("%s: renewed = %q, want %q", tr.Cluster, tr.Renewed, want)
				}
			}
			lr := westLink(res)
			creds = res.Credentials
			nc := westCred(creds)
			same := nc.Token == old.Token
			switch {
			case same && !st.mayKeepToken:
				t.Error("west's token was not replaced")
			case same && lr.Action != Unchanged:
				t.Errorf("east's secret for west: %s with the same token, want unchanged", lr.Action)
			case !same && lr.Action != Updated:
				t.Errorf("east's secret for west: %s, want updated", lr.Action)
			}
			if nc.Legacy != so.Token.Legacy {
				t.Errorf("new credential legacy = %v, want %v", nc.Legacy, so.Token.Legacy)
			}
			if !nc.Legacy && time.Until(nc.Expiry) < time.Hour {
				t.Errorf("new bound token expires %v, want about a year away (or the server's cap)", nc.Expiry)
			}
			assertReads(t, ctx, lr, false)
			if st.reason == ReasonRejected && !same {
				eventuallyRefused(t, ctx, westKube, westAcct, old.Token)
			}
		})
	}
}

// TestLabRemove takes north out of a three-cluster mesh.
func TestLabRemove(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "remove-system", AllowLoopback: true}
	m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"}, Member{Name: "north"})
	res := mustReconcile(t, ctx, m, nil, o)
	var northToken string
	for _, c := range res.Credentials {
		if c.Cluster == "north" {
			northToken = c.Token
		}
	}
	var northLink LinkResult
	for _, lr := range res.Links {
		if lr.Reader == "east" && lr.Target == "north" {
			northLink = lr
		}
	}
	oldReader := readerClient(t, ctx, northLink)

	rm, err := Remove(ctx, m, "north", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := rm.Err(); err != nil {
		t.Fatal(err)
	}
	for _, s := range secretsIn(t, ctx, o.Namespace) {
		if strings.HasPrefix(s, "north:") || strings.HasSuffix(s, "->north") {
			t.Errorf("secret left after removing north: %s", s)
		}
	}
	if len(rm.Secrets) != 4 {
		t.Errorf("removal deleted %d secrets, want 4 (2 reading north, 2 held by north): %+v", len(rm.Secrets), rm.Secrets)
	}
	northKube, err := testLab.Get(t).Cluster("north").Connect()
	if err != nil {
		t.Fatal(err)
	}
	eventuallyRefused(t, ctx, northKube, Account{Namespace: o.Namespace, Name: ReaderServiceAccount}, northToken)
	if _, err := oldReader.CoreV1().Services("").List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("old kubeconfig for north lists services: err = %v, want Unauthorized", err)
	}

	// The rest of the mesh is intact and stays so.
	rest := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
	again := mustReconcile(t, ctx, rest, res.Credentials, o)
	for _, lr := range again.Links {
		if lr.Action != Unchanged {
			t.Errorf("after removal: %s %s, want unchanged", lr.Link, lr.Action)
		}
	}
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestLabBadInput(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "bad-system", AllowLoopback: true}
	l := testLab.Get(t)

	t.Run("context missing from the kubeconfig", func(t *testing.T) {
		m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
		m.Clusters = append(m.Clusters, Cluster{Member: Member{Name: "north"}, Kubeconfig: l.Kubeconfig, Context: "no-such-context"})
		res, err := Reconcile(ctx, m, nil, o)
		if err != nil {
			t.Fatal(err)
		}
		assertPartial(t, res, "north", true, `north: kubeconfig context "no-such-context"`)
	})

	t.Run("unreachable API server", func(t *testing.T) {
		addr := "https://" + closedPort(t)
		m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"}, Member{Name: "north"})
		good := mustReconcile(t, ctx, m, nil, o)
		m.Clusters[1].APIServer = addr
		res, err := Reconcile(ctx, m, good.Credentials, o)
		if err != nil {
			t.Fatal(err)
		}
		assertPartial(t, res, "west", false, "west: API server "+addr+" does not answer")
		if len(res.Credentials) != len(good.Credentials) {
			t.Errorf("credentials out: %d, want the %d passed in kept (west's despite its failure)", len(res.Credentials), len(good.Credentials))
		}
		for i := range res.Credentials {
			if res.Credentials[i].Token != good.Credentials[i].Token {
				t.Errorf("%s: token replaced, want kept", res.Credentials[i].Key())
			}
		}
	})

	t.Run("loopback address without AllowLoopback", func(t *testing.T) {
		m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
		strict := o
		strict.AllowLoopback = false
		res, err := Reconcile(ctx, m, nil, strict)
		if err != nil {
			t.Fatal(err)
		}
		if err := res.Err(); err == nil || !strings.Contains(err.Error(), "is loopback") {
			t.Errorf("err = %v, want a loopback refusal", err)
		}
	})

	plans := []struct {
		name    string
		topo    Topology
		members []Member
		err     string
	}{
		{"two clusters with the same name", MultiPrimary, []Member{{Name: "east"}, {Name: "east"}}, "cluster east: listed twice"},
		{"a topology with no primary", PrimaryRemote, []Member{{Name: "east", Role: RoleRemote}, {Name: "west", Role: RoleRemote}}, "no primary cluster"},
	}
	for _, p := range plans {
		t.Run(p.name, func(t *testing.T) {
			m := labMesh(t, p.topo, p.members...)
			if _, err := Reconcile(ctx, m, nil, o); err == nil || !strings.Contains(err.Error(), p.err) {
				t.Errorf("err = %v, want %q", err, p.err)
			}
		})
	}
}

// assertPartial checks that bad's failure is reported with want, and that
// every link not involving bad (as a target, or as a reader when it cannot
// be reached at all) was completed and works.
func assertPartial(t *testing.T, res *Result, bad string, readerBroken bool, want string) {
	t.Helper()
	ctx := ctxFor(t)
	if err := res.Err(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want it to contain %q", err, want)
	}
	for _, tr := range res.Targets {
		if (tr.Err != nil) != (tr.Cluster == bad) {
			t.Errorf("target %s: err = %v", tr.Cluster, tr.Err)
		}
	}
	for _, lr := range res.Links {
		involved := lr.Target == bad || (readerBroken && lr.Reader == bad)
		switch {
		case involved && lr.Action != Failed:
			t.Errorf("%s: %s, want failed", lr.Link, lr.Action)
		case involved && lr.Target == bad && !errors.Is(lr.Err, errTargetFailed) && !strings.Contains(lr.Err.Error(), want):
			t.Errorf("%s: err = %v", lr.Link, lr.Err)
		case !involved && (lr.Action == Failed || lr.Action == Deleted):
			t.Errorf("%s: %s (%v), want completed", lr.Link, lr.Action, lr.Err)
		case !involved:
			assertReads(t, ctx, lr, false)
		}
	}
}

// TestLabDryRun previews a federation without writing anything.
func TestLabDryRun(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "dryrun-system", AllowLoopback: true}
	m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
	for i := range m.Clusters {
		m.Clusters[i].Kube.DryRun = true
	}
	res := mustReconcile(t, ctx, m, nil, o)
	for _, lr := range res.Links {
		if lr.Action != Created {
			t.Errorf("%s: %s, want created (previewed)", lr.Link, lr.Action)
		}
	}
	for _, name := range []string{"east", "west"} {
		if _, err := admin(t, name).CoreV1().Namespaces().Get(ctx, o.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s: namespace %s exists after a dry run (err %v)", name, o.Namespace, err)
		}
	}
	if got := secretsIn(t, ctx, o.Namespace); len(got) != 0 {
		t.Errorf("dry run wrote secrets: %v", got)
	}
}
