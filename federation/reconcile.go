package federation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Defaults of Options.
const (
	DefaultNamespace         = "istio-system"
	DefaultExternalNamespace = "external-istiod"
	DefaultParallelism       = 8
)

// Cluster is one member cluster with the means to reach it.
type Cluster struct {
	Member
	// Kube is the admin connection; when nil, Reconcile connects through
	// Kubeconfig and Context (kube.FromKubeconfig).
	Kube                *kube.Cluster
	Kubeconfig, Context string
	// APIServer is the address other clusters reach this one's API server
	// at (the spec's apiServer); "" uses the connection's host.
	APIServer string
	// CAData and TLSServerName override what the connection's config says,
	// for an APIServer behind a different certificate.
	CAData        []byte
	TLSServerName string
	// Gateway is where the cluster's east-west gateway exposes its API
	// server, for a cluster the layout says is read through it
	// (apiServerAccess: gateway); APIServer and TLSServerName are then not
	// used. nil while the gateway has no address.
	Gateway *GatewayPath
}

// Mesh is the clusters to federate and how.
type Mesh struct {
	Topology Topology
	Clusters []Cluster
	// Layout is the mesh's compiled topology (the hub compiles it once per
	// request); nil compiles Topology over the clusters' members.
	Layout *deploy.Layout
}

// layout returns m's compiled topology, and o with its namespaces.
func (m Mesh) layout(o Options) (*deploy.Layout, Options, error) {
	l := m.Layout
	if l == nil {
		var err error
		if l, err = deploy.Compile(m.Topology, m.members(), deploy.Namespaces{ControlPlane: o.Namespace, External: o.ExternalNamespace}); err != nil {
			return nil, o, err
		}
	}
	o.Namespace, o.ExternalNamespace = l.Namespaces.ControlPlane, l.Namespaces.External
	return l, o, nil
}

func (m Mesh) members() []Member {
	out := make([]Member, len(m.Clusters))
	for i, c := range m.Clusters {
		out[i] = c.Member
	}
	return out
}

// Options configure federation. The zero value is usable.
type Options struct {
	// Namespace is the control-plane namespace (istio-system).
	Namespace string
	// ExternalNamespace is the external istiod's namespace
	// (external-control-plane topology), on the control-plane cluster and
	// on the data-plane clusters alike (external-istiod).
	ExternalNamespace string
	// IstiodServiceAccount is the external istiod's account on its config
	// cluster ("istiod"; OpenShift Service Mesh: istiod-<revision>).
	IstiodServiceAccount string
	// Token says how credentials are minted and renewed.
	Token TokenOptions
	// AllowLoopback accepts loopback API server addresses (a local lab).
	AllowLoopback bool
	// ProbeTimeout bounds each API server reachability probe (5s).
	ProbeTimeout time.Duration
	// GatewayWait bounds how long a gateway path is probed again until it
	// answers (30s): a gateway just configured to expose the API server
	// opens its port once its proxy has the listener.
	GatewayWait time.Duration
	// Parallelism bounds the clusters worked on at once (8).
	Parallelism int
	// Scope, when not empty, limits the reconcile to the writes into these
	// clusters (a hub replica's share of the mesh): their reader accounts
	// and credentials, and the secrets they hold. A target outside it is
	// linked with its credential from known, which its own reconcile keeps;
	// nothing is written into it.
	Scope []string
}

// inScope reports whether the reconcile writes into cluster.
func (o Options) inScope(cluster string) bool {
	return len(o.Scope) == 0 || slices.Contains(o.Scope, cluster)
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.ExternalNamespace == "" {
		o.ExternalNamespace = DefaultExternalNamespace
	}
	if o.IstiodServiceAccount == "" {
		o.IstiodServiceAccount = DefaultIstiodServiceAccount
	}
	if o.Parallelism <= 0 {
		o.Parallelism = DefaultParallelism
	}
	return o
}

// SecretNamespace is where readers hold their secrets in topology t.
func (o Options) SecretNamespace(t Topology) string {
	o = o.withDefaults()
	if t == ExternalControlPlane {
		return o.ExternalNamespace
	}
	return o.Namespace
}

// AccountFor is the account a link's secret authenticates as in its target.
func (o Options) AccountFor(t Topology, l Link, targetRole Role) Account {
	o = o.withDefaults()
	ns := o.SecretNamespace(t)
	if l.Kind == LinkConfig {
		return Account{Namespace: ns, Name: o.IstiodServiceAccount, Config: true}
	}
	return Account{Namespace: ns, Name: ReaderServiceAccount, Writer: targetRole == RoleRemote || targetRole == RoleDataPlane}
}

// Action is what happened to one secret.
type Action string

const (
	Created   Action = "created"
	Updated   Action = "updated"
	Unchanged Action = "unchanged"
	Deleted   Action = "deleted"
	Failed    Action = "failed"
)

// LinkResult is the outcome for one link's secret (or one stale secret pruned).
type LinkResult struct {
	Link
	Namespace string
	Secret    string
	Action    Action
	Err       error
}

// TargetResult is the outcome of preparing one read cluster: its address,
// account and credential.
type TargetResult struct {
	Cluster  string
	Endpoint Endpoint
	Account  Account
	// Renewed says why a new credential was issued; "" when the stored one was kept.
	Renewed RenewalReason
	// OutOfScope: the target is outside Options.Scope; its stored
	// credential was used as it is.
	OutOfScope bool
	Err        error
}

// Result reports a reconcile per link and per read cluster.
type Result struct {
	Plan Plan
	// Links has one entry per planned link, in plan order, then one per
	// stale secret pruned.
	Links   []LinkResult
	Targets []TargetResult
	// Credentials are the credentials to store and pass to the next
	// Reconcile: one per read cluster in scope, new or kept (a cluster that
	// failed keeps the one passed in, if any).
	Credentials []Credential
}

// Err joins every failure of the reconcile, nil when all succeeded.
func (r *Result) Err() error {
	var errs []error
	for _, t := range r.Targets {
		if t.Err != nil {
			errs = append(errs, t.Err)
		}
	}
	for _, l := range r.Links {
		// A link failed by its target's failure repeats that error.
		if l.Err != nil && !errors.Is(l.Err, errTargetFailed) {
			errs = append(errs, l.Err)
		}
	}
	return errors.Join(errs...)
}

var errTargetFailed = errors.New("target cluster not ready")

// Reconcile converges every cluster of m to the plan of its topology:
// reader accounts and credentials in the read clusters, secrets in the
// reading ones, stale flotilla secrets pruned. Work on different clusters
// runs in parallel and one cluster's failure does not stop the others; it
// only returns an error for input that cannot be planned. known are the
// credentials stored by the previous run: a valid one is reused, so a second
// run writes nothing.
func Reconcile(ctx context.Context, m Mesh, known []Credential, o Options) (*Result, error) {
	layout, o, err := m.layout(o.withDefaults())
	if err != nil {
		return nil, err
	}
	plan := NewPlan(layout)
	byName := map[string]*Cluster{}
	for i := range m.Clusters {
		byName[m.Clusters[i].Name] = &m.Clusters[i]
	}
	conns := connectAll(m.Clusters)
	knownBy := map[string]*Credential{}
	for i := range known {
		knownBy[known[i].Key()] = &known[i]
	}

	// Phase 1, per read cluster: address, account, credential.
	targets := plan.Targets()
	res := &Result{Plan: plan, Targets: make([]TargetResult, len(targets))}
	creds := make([]*Credential, len(targets))
	forEach(len(targets), o.Parallelism, func(i int) {
		l := targets[i]
		spec := byName[l.Target]
		acct := o.AccountFor(plan.Topology, l, normalize([]Member{spec.Member})[0].Role)
		tr := TargetResult{Cluster: l.Target, Account: acct}
		place, _ := layout.Cluster(l.Target)
		if !o.inScope(l.Target) {
			tr.OutOfScope = true
			creds[i], tr.Err = storedTarget(spec, place.APIServerAccess, conns[l.Target], acct, knownBy, o, &tr)
			res.Targets[i] = tr
			return
		}
		cred, err := prepareTarget(ctx, spec, place.APIServerAccess, conns[l.Target], acct, plan.ControlPlaneClusters[l.Target], knownBy, o, &tr)
		tr.Err = err
		res.Targets[i] = tr
		creds[i] = cred
	})
	ready := map[string]int{}
	for i, t := range res.Targets {
		if t.OutOfScope {
			if t.Err == nil {
				ready[t.Cluster] = i
			}
			continue
		}
		if t.Err == nil {
			ready[t.Cluster] = i
			res.Credentials = append(res.Credentials, *creds[i])
			continue
		}
		// A cluster that failed this time keeps its stored credential, so
		// that the next run does not replace a token that still works.
		key := Credential{Cluster: t.Cluster, Namespace: t.Account.Namespace, Account: t.Account.Name}.Key()
		if k := knownBy[key]; k != nil {
			res.Credentials = append(res.Credentials, *k)
		}
	}

	// Phase 2, per reading cluster: its secrets, and pruning of stale ones.
	// Every cluster takes part, since one that reads nothing any more may
	// still hold secrets to prune.
	perReader := make([][]LinkResult, len(m.Clusters))
	forEach(len(m.Clusters), o.Parallelism, func(i int) {
		r := m.Clusters[i].Name
		if !o.inScope(r) {
			return
		}
		var want []writeLink
		for _, l := range plan.LinksFrom(r) {
			p, _ := layout.Cluster(l.Reader)
			w := writeLink{LinkResult: LinkResult{Link: l, Namespace: p.SecretNamespace, Secret: SecretName(l.Kind, l.Target)}}
			if ti, ok := ready[l.Target]; ok {
				t, c := res.Targets[ti], creds[ti]
				w.ep, w.token = t.Endpoint, c.Token
			} else {
				w.Action, w.Err = Failed, fmt.Errorf("%s: secret %s/%s: %w: %s", r, w.Namespace, w.Secret, errTargetFailed, l.Target)
			}
			want = append(want, w)
		}
		perReader[i] = writeSecrets(ctx, conns[r], r, want, []string{o.Namespace, o.ExternalNamespace})
	})
	for _, lr := range perReader {
		res.Links = append(res.Links, lr...)
	}
	// Plan order first, pruned secrets after.
	order := map[Link]int{}
	for i, l := range plan.Links {
		order[l] = i
	}
	sort.SliceStable(res.Links, func(i, j int) bool {
		oi, iok := order[res.Links[i].Link]
		oj, jok := order[res.Links[j].Link]
		if iok != jok {
			return iok
		}
		return oi < oj
	})
	return res, nil
}

// connection is a cluster's admin connection or why there is none.
type connection struct {
	kube *kube.Cluster
	err  error
}

func connectAll(clusters []Cluster) map[string]connection {
	out := map[string]connection{}
	for _, c := range clusters {
		switch {
		case c.Kube != nil:
			out[c.Name] = connection{kube: c.Kube.As(kube.ManagerFederation)}
		default:
			// Building clients reads files only; no need for parallelism.
			k, err := kube.FromKubeconfig(c.Name, c.Kubeconfig, c.Context)
			if err == nil {
				k = k.As(kube.ManagerFederation)
			}
			out[c.Name] = connection{kube: k, err: err}
		}
	}
	return out
}

func prepareTarget(ctx context.Context, spec *Cluster, access deploy.APIServerAccess, conn connection, acct Account, controlPlane string,
	known map[string]*Credential, o Options, tr *TargetResult) (*Credential, error) {
	if conn.err != nil {
		return nil, conn.err
	}
	c := conn.kube
	ep, err := targetEndpoint(spec, access, c, o)
	if err != nil {
		return nil, err
	}
	tr.Endpoint = ep
	if err := probePath(ctx, spec.Name, ep, o); err != nil {
		return nil, err
	}
	if err := ApplyAccount(ctx, c, acct); err != nil {
		return nil, err
	}
	if controlPlane != "" {
		if err := annotateControlPlane(ctx, c, o.Namespace, controlPlane); err != nil {
			return nil, err
		}
	}
	key := Credential{Cluster: spec.Name, Namespace: acct.Namespace, Account: acct.Name}.Key()
	cred, reason, err := RenewCredential(ctx, c, acct, known[key], o.Token)
	if err != nil {
		return nil, err
	}
	tr.Renewed = reason
	return &cred, nil
}

// storedTarget is a target outside the reconcile's scope: its address from
// the connection's config and its stored credential, without a request to
// it (its own reconcile probes it, keeps its account and renews the token).
func storedTarget(spec *Cluster, access deploy.APIServerAccess, conn connection, acct Account, known map[string]*Credential, o Options, tr *TargetResult) (*Credential, error) {
	if conn.err != nil {
		return nil, conn.err
	}
	ep, err := targetEndpoint(spec, access, conn.kube, o)
	if err != nil {
		return nil, err
	}
	tr.Endpoint = ep
	key := Credential{Cluster: spec.Name, Namespace: acct.Namespace, Account: acct.Name}.Key()
	cred := known[key]
	if cred == nil {
		return nil, fmt.Errorf("%s: no stored credential for %s yet (issued by the reconcile that owns %s)", spec.Name, acct, spec.Name)
	}
	return cred, nil
}

// targetEndpoint is how the readers of spec reach its API server: through
// its east-west gateway when the layout says so, else directly.
func targetEndpoint(spec *Cluster, access deploy.APIServerAccess, c *kube.Cluster, o Options) (Endpoint, error) {
	var ep Endpoint
	var err error
	if access == deploy.APIServerViaGateway {
		var gw GatewayPath
		if spec.Gateway != nil {
			gw = *spec.Gateway
		}
		// The gateway routes on the API server's name: no other server
		// name would reach it.
		ep, err = GatewayEndpoint(spec.Name, gw, c.Config, o.AllowLoopback)
	} else {
		ep, err = ResolveEndpoint(spec.Name, spec.APIServer, c.Config, o.AllowLoopback)
		if err == nil && spec.TLSServerName != "" {
			ep.TLSServerName = spec.TLSServerName
		}
	}
	if err != nil {
		return Endpoint{}, err
	}
	if len(spec.CAData) > 0 {
		ep.CAData = spec.CAData
	}
	return ep, nil
}

// annotateControlPlane names the primary that manages a remote on its
// control-plane namespace, applied as federation's manager: the control
// plane's fields on the namespace (the network label) are its own.
func annotateControlPlane(ctx context.Context, c *kube.Cluster, ns, primary string) error {
	ac := corev1ac.Namespace(ns).WithLabels(kube.ManagedLabels()).
		WithAnnotations(map[string]string{ControlPlaneClustersAnnotation: primary})
	if _, err := kube.ApplyNamespace(ctx, c, ac); err != nil {
		return fmt.Errorf("%s: annotate namespace %s with %s: %w", c.Name, ns, ControlPlaneClustersAnnotation, err)
	}
	return nil
}

// writeLink is a link's secret to write, with what it is made of.
type writeLink struct {
	LinkResult
	ep    Endpoint
	token string
}

// writeSecrets converges reader's secrets to want (entries already failed
// are reported as they are) and prunes the flotilla secrets of the
// namespaces in pruneNS that are not wanted.
func writeSecrets(ctx context.Context, conn connection, reader string, want []writeLink, pruneNS []string) []LinkResult {
	out := make([]LinkResult, 0, len(want))
	fail := func(err error) []LinkResult {
		for _, w := range want {
			if w.Err == nil {
				w.Action, w.Err = Failed, err
			}
			out = append(out, w.LinkResult)
		}
		return out
	}
	if conn.err != nil {
		return fail(conn.err)
	}
	c := conn.kube
	existing := map[string]*corev1.Secret{}
	seenNS := map[string]bool{}
	for _, ns := range pruneNS {
		if seenNS[ns] {
			continue
		}
		seenNS[ns] = true
		list, err := c.Kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: MultiClusterLabel + "=true"})
		if err != nil {
			return fail(fmt.Errorf("%s: list secrets in %s: %w", reader, ns, err))
		}
		for i := range list.Items {
			s := &list.Items[i]
			existing[s.Namespace+"/"+s.Name] = s
		}
	}
	wanted := map[string]bool{}
	nsReady := map[string]bool{}
	for _, w := range want {
		key := w.Namespace + "/" + w.Secret
		wanted[key] = true
		if w.Err != nil {
			out = append(out, w.LinkResult)
			continue
		}
		w.Action, w.Err = writeSecret(ctx, c, w, existing[key], nsReady)
		if w.Err != nil {
			w.Action = Failed
		}
		out = append(out, w.LinkResult)
	}
	keys := make([]string, 0, len(existing))
	for k := range existing {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := existing[k]
		if wanted[k] || s.Labels[ManagedByLabel] != ManagedByValue {
			continue
		}
		kind := LinkRemote
		if s.Name == ConfigSecretName {
			kind = LinkConfig
		}
		lr := LinkResult{Link: Link{Reader: reader, Target: s.Annotations[ClusterAnnotation], Kind: kind}, Namespace: s.Namespace, Secret: s.Name, Action: Deleted}
		if err := deleteSecret(ctx, c, s); err != nil {
			lr.Action, lr.Err = Failed, err
		}
		out = append(out, lr)
	}
	return out
}

func writeSecret(ctx context.Context, c *kube.Cluster, w writeLink, existing *corev1.Secret, nsReady map[string]bool) (Action, error) {
	kc, err := Kubeconfig(w.Target, w.ep, w.token)
	if err != nil {
		return Failed, fmt.Errorf("%s: secret %s/%s: %w", c.Name, w.Namespace, w.Secret, err)
	}
	d := desiredSecret{Namespace: w.Namespace, Name: w.Secret, Key: SecretKey(w.Kind, w.Target), Cluster: w.Target, Kubeconfig: kc}
	if d.matches(existing) && c.Owns(existing) {
		return Unchanged, c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("secrets"), existing)
	}
	// Same content but not applied by this manager: written by a flotilla
	// of one field manager, and applied again to be taken over.
	action := Updated
	if d.matches(existing) {
		action = Unchanged
	}
	if existing == nil && !nsReady[w.Namespace] {
		ns, err := kube.EnsureNamespace(ctx, c, w.Namespace, kube.ManagedLabels())
		if err != nil {
			return Failed, err
		}
		if ns == nil {
			return Created, nil // dry run into a namespace yet to be made
		}
		nsReady[w.Namespace] = true
	}
	if existing != nil && len(existing.Data) != 1 {
		// Apply merges data keys; a stale extra key (a renamed cluster) would
		// survive it, and istiod reads every key as a cluster.
		if err := deleteSecret(ctx, c, existing); err != nil {
			return Failed, err
		}
		existing = nil
	}
	got, err := c.Kube.CoreV1().Secrets(w.Namespace).Apply(ctx, d.apply(), c.ApplyOptions())
	if err != nil {
		return Failed, fmt.Errorf("%s: write secret %s/%s: %w", c.Name, w.Namespace, w.Secret, err)
	}
	if err := c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("secrets"), got); err != nil {
		return Failed, err
	}
	if existing == nil {
		return Created, nil
	}
	return action, nil
}

func deleteSecret(ctx context.Context, c *kube.Cluster, s *corev1.Secret) error {
	err := c.Kube.CoreV1().Secrets(s.Namespace).Delete(ctx, s.Name, c.DeleteOptions())
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("%s: delete secret %s/%s: %w", c.Name, s.Namespace, s.Name, err)
	}
	return nil
}

// forEach runs fn(0..n-1) with at most limit running at once.
func forEach(n, limit int, fn func(i int)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}
