package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// Cluster is one lab cluster the emulator plays the data plane of.
type Cluster struct {
	Name string
	// Config is an admin connection: the emulator acts as the cluster's
	// kubelet, kube-proxy and Envoys with it, for this cluster only.
	Config *rest.Config
}

// Config configures an Emulator.
type Config struct {
	Clusters []Cluster
	// SyncInterval is how often clusters are re-read; 0 is 500ms.
	SyncInterval time.Duration
	// Log receives one line per listener change and per failed call; nil discards.
	Log io.Writer
}

// Emulator runs the lab's data plane until its context ends.
type Emulator struct {
	cfg      Config
	clusters []*member
	world    atomic.Pointer[world]

	mu        sync.Mutex
	listeners map[string]*listener // by address
	execs     map[string]bool      // kwok Execs written, by cluster/pod/uid/capture
	agents    map[string]*agent    // by cluster/pod/uid
	ztunnels  map[string]*ztunnel  // by cluster/pod/uid of the ztunnel pod
	runCtx    context.Context      // Run's: agents live as long as it
	kick      chan struct{}        // asks Run for a sync
	rr        map[string]int       // round-robin position per client and service
	syncMu    sync.Mutex
	lastSync  time.Time
	// firstSeen is when the pod watch first saw a pod running, by UID: the
	// start of its data plane's lag, logged once the pod is marked ready.
	firstSeen sync.Map
	logMu     sync.Mutex
}

type member struct {
	name string
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

type world struct {
	views map[string]*clusterView
	order []string
}

type listener struct {
	ln   net.Listener
	kind string
}

// New connects to the clusters; Run starts the data plane.
func New(cfg Config) (*Emulator, error) {
	if len(cfg.Clusters) == 0 {
		return nil, errors.New("emulator: no clusters")
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = 500 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	e := &Emulator{cfg: cfg, listeners: map[string]*listener{}, rr: map[string]int{}, execs: map[string]bool{}, agents: map[string]*agent{}, ztunnels: map[string]*ztunnel{},
		kick: make(chan struct{}, 1)}
	for _, c := range cfg.Clusters {
		rc := rest.CopyConfig(c.Config)
		// A sync reads every cluster twice a second: client-go's default
		// 5 QPS would throttle each request by seconds.
		rc.QPS, rc.Burst = 200, 400
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("emulator: %s: %w", c.Name, err)
		}
		dyn, err := dynamic.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("emulator: %s: %w", c.Name, err)
		}
		e.clusters = append(e.clusters, &member{name: c.Name, kube: kc, dyn: dyn})
	}
	e.world.Store(&world{views: map[string]*clusterView{}})
	return e, nil
}

// Run syncs until ctx ends, then closes every listener. Besides every
// SyncInterval it syncs as soon as a pod changes, so that a pod that just
// started has its capture address and kwok Exec before anyone execs in it.
func (e *Emulator) Run(ctx context.Context) error {
	defer e.closeAll()
	kick := e.kick
	e.mu.Lock()
	e.runCtx = ctx
	e.mu.Unlock()
	defer e.waitAgents()
	for _, m := range e.clusters {
		go e.watchPods(ctx, m, kick)
	}
	t := time.NewTicker(e.cfg.SyncInterval)
	defer t.Stop()
	for {
		if err := e.Sync(ctx); err != nil && ctx.Err() == nil {
			e.logf("sync: %v", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-kick:
		}
	}
}

// watchPods signals kick on every pod event of m, re-watching until ctx ends.
func (e *Emulator) watchPods(ctx context.Context, m *member, kick chan<- struct{}) {
	for ctx.Err() == nil {
		w, err := m.kube.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
		if err == nil {
			for ev := range w.ResultChan() {
				if p, ok := ev.Object.(*corev1.Pod); ok && running(p) && p.Annotations[lab.DataPlaneAnnotation] == "" {
					e.firstSeen.LoadOrStore(string(p.UID), time.Now())
				}
				select {
				case kick <- struct{}{}:
				default: // a sync is due anyway
				}
			}
			w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Sync reads every cluster once and opens or closes listeners to match.
func (e *Emulator) Sync(ctx context.Context) error {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	defer func() {
		if d := time.Since(t0); d > 2*time.Second {
			e.logf("slow sync: %s", d.Round(time.Millisecond))
		}
	}()
	w := &world{views: map[string]*clusterView{}}
	// Clusters are read side by side: a sync must not take as long as all
	// of them together, pods wait on it to become Ready.
	read := make([]*clusterView, len(e.clusters))
	readErr := make([]error, len(e.clusters))
	var wg sync.WaitGroup
	for i, m := range e.clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			read[i], readErr[i] = readCluster(ctx, m.name, m.kube, m.dyn)
		}()
	}
	wg.Wait()
	var errs []error
	for i, m := range e.clusters {
		v, err := read[i], readErr[i]
		if err != nil {
			errs = append(errs, err)
			if old := e.world.Load().views[m.name]; old != nil {
				v = old // keep serving what was last known
			} else {
				continue
			}
		}
		w.views[m.name] = v
		w.order = append(w.order, m.name)
	}
	e.world.Store(w)
	e.reconcileListeners(ctx, w)
	e.lastSync = time.Now()
	return errors.Join(errs...)
}

// syncIfStale re-reads the clusters when the last sync is older than d, so
// that a request right after a rollout sees its pods.
func (e *Emulator) syncIfStale(ctx context.Context, d time.Duration) {
	e.syncMu.Lock()
	stale := time.Since(e.lastSync) > d
	e.syncMu.Unlock()
	if stale {
		if err := e.Sync(ctx); err != nil {
			e.logf("sync: %v", err)
		}
	}
}

// freshen syncs a world older than 300 ms, within freshenBudget.
func (e *Emulator) freshen() {
	ctx, cancel := context.WithTimeout(context.Background(), freshenBudget)
	defer cancel()
	e.syncIfStale(ctx, 300*time.Millisecond)
}

func (e *Emulator) member(name string) *member {
	for _, m := range e.clusters {
		if m.name == name {
			return m
		}
	}
	return nil
}

// reconcileListeners opens what the world asks for and closes the rest:
// per cluster its node capture address, per running pod its own capture
// address (and the kwok Exec that sends the pod's exec'd processes there),
// its helloworld pods, its gateways.
func (e *Emulator) reconcileListeners(ctx context.Context, w *world) {
	want := map[string]func(net.Conn){}
	kinds := map[string]string{}
	type podExec struct {
		cluster, capture string
		pod              *corev1.Pod
		// redirect: an ambient pod istio-cni has not yet handed to its
		// node's ztunnel (annotation ambient.istio.io/redirection).
		redirect bool
	}
	var execs []podExec
	var hostNet []podExec
	for _, name := range w.order {
		v := w.views[name]
		if v.nodeIP != nil {
			if lb, ok := lab.Loopback(v.nodeIP); ok {
				addr := net.JoinHostPort(lb.String(), strconv.Itoa(lab.ProxyCapturePort))
				want[addr], kinds[addr] = e.captureHandler(name, nil), "capture "+name
			}
		}
		for i := range v.pods {
			p := &v.pods[i]
			if !running(p) {
				continue
			}
			if p.Spec.HostNetwork {
				// It shares the node's network, and so the node's capture
				// address: no listener of its own (istio-cni's node agent).
				if p.Annotations[lab.DataPlaneAnnotation] != lab.DataPlaneReady {
					hostNet = append(hostNet, podExec{cluster: name, pod: p})
				}
				continue
			}
			ambient := ambientPod(v, p)
			if ambient && redirected(p) {
				if lb, ok := lab.Loopback(net.ParseIP(p.Status.PodIP)); ok {
					addr := net.JoinHostPort(lb.String(), strconv.Itoa(hbonePort))
					want[addr], kinds[addr] = e.hboneInbound(name, p), "ztunnel inbound "+name+"/"+p.Namespace+"/"+p.Name
				}
			}
			if addr, ok := lab.PodCaptureAddress(net.ParseIP(p.Status.PodIP)); ok {
				want[addr], kinds[addr] = e.captureHandler(name, &podRef{namespace: p.Namespace, name: p.Name, uid: string(p.UID)}), "capture "+name+"/"+p.Namespace+"/"+p.Name
				execs = append(execs, podExec{cluster: name, capture: addr, pod: p,
					redirect: ambient && !redirected(p) && cniOnNode(v, p.Spec.NodeName)})
			}
			if _, port, ok := helloVersion(p); ok {
				if lb, ok := lab.Loopback(net.ParseIP(p.Status.PodIP)); ok {
					addr := net.JoinHostPort(lb.String(), strconv.Itoa(int(port)))
					want[addr], kinds[addr] = e.serverHandler(name, p.Namespace, p.Name), "pod "+name+"/"+p.Namespace+"/"+p.Name
				}
			}
		}
		for _, g := range v.gateways {
			// A gateway's Envoy listens once istiod configured it: a
			// gateway pod's agent is ready.
			if g.crossNetwork && e.gatewayAgent(name, g.selector) != nil {
				if lb, ok := lab.Dialable(net.ParseIP(g.address)); ok {
					addr := net.JoinHostPort(lb.String(), strconv.Itoa(crossNetworkPort))
					want[addr], kinds[addr] = e.gatewayHandler(name, g.selector), "gateway "+name
				}
			}
		}
		e.eastWestListeners(name, v, want, kinds)
	}
	for _, name := range w.order {
		e.passthroughListeners(w.views[name], want, kinds)
	}
	e.mu.Lock()
	e.syncAgents(w)
	for addr, l := range e.listeners {
		if _, ok := want[addr]; !ok || kinds[addr] != l.kind {
			l.ln.Close()
			delete(e.listeners, addr)
			e.logf("closed %s (%s)", addr, l.kind)
		}
	}
	for addr, h := range want {
		if _, ok := e.listeners[addr]; ok {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			e.logf("listen %s (%s): %v", addr, kinds[addr], err)
			continue
		}
		e.listeners[addr] = &listener{ln: ln, kind: kinds[addr]}
		e.logf("listening on %s (%s)", addr, kinds[addr])
		go serve(ln, h)
	}
	// Only pods whose capture address listens get an Exec pointing there;
	// only pods with their Exec (and every listener of theirs) are Ready.
	var pending, unready []podExec
	written := map[string]bool{}
	for _, x := range execs {
		key := execKey(x.cluster, x.pod, x.capture)
		if e.listeners[x.capture] == nil {
			continue
		}
		written[key] = e.execs[key]
		switch {
		case !e.execs[key]:
			pending = append(pending, x)
		case x.pod.Annotations[lab.DataPlaneAnnotation] != lab.DataPlaneReady:
			unready = append(unready, x)
		}
	}
	e.execs = written // forget pods that are gone
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, x := range pending {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !e.writeExec(ctx, x.cluster, x.pod, x.capture) {
				return
			}
			e.mu.Lock()
			e.execs[execKey(x.cluster, x.pod, x.capture)] = true
			e.mu.Unlock()
			if x.redirect {
				e.redirectToZtunnel(ctx, w.views[x.cluster], x.pod)
				return // ready once the annotation shows in a later sync
			}
			if e.proxyReady(x.cluster, x.pod) {
				e.markDataPlaneReady(ctx, x.cluster, x.pod)
			}
		}()
	}
	for _, x := range hostNet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.markDataPlaneReady(ctx, x.cluster, x.pod)
		}()
	}
	for _, x := range unready {
		if x.redirect {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.redirectToZtunnel(ctx, w.views[x.cluster], x.pod)
			}()
			continue
		}
		if !e.proxyReady(x.cluster, x.pod) {
			continue // its agent kicks a sync once it is
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.markDataPlaneReady(ctx, x.cluster, x.pod)
		}()
	}
	wg.Wait()
}

func execKey(cluster string, p *corev1.Pod, capture string) string {
	return cluster + "/" + p.Namespace + "/" + p.Name + "/" + string(p.UID) + "/" + capture
}

func agentKey(cluster string, p *corev1.Pod) string {
	return cluster + "/" + p.Namespace + "/" + p.Name + "/" + string(p.UID)
}

// syncAgents (e.mu held) starts an agent for every running
// pod with an istio-proxy container and stops those of pods that are gone.
// Agents start only under Run, whose context they live in.
func (e *Emulator) syncAgents(w *world) {
	want := map[string]bool{}
	for _, name := range w.order {
		v := w.views[name]
		for i := range v.pods {
			p := &v.pods[i]
			proxy := sidecarContainer(p)
			if !running(p) || proxy == nil || p.Annotations[sidecarStatus] == "" && p.Labels[gatewayManagedLabel] == "" {
				// Not injected: its istio-proxy is the template's
				// placeholder (image auto), which no kubelet can run.
				// A gateway istiod's deployment controller renders
				// (Gateway API) has its proxy written out instead.
				continue
			}
			key := agentKey(name, p)
			want[key] = true
			if e.agents[key] != nil || e.runCtx == nil {
				continue
			}
			m := e.member(name)
			ctx, cancel := context.WithCancel(e.runCtx)
			a := &agent{cluster: name, kube: m.kube, pod: p.DeepCopy(), proxy: proxy.DeepCopy(), cancel: cancel, done: make(chan struct{}),
				kick: e.requestSync, logf: e.logf, responses: map[string]int{}}
			e.agents[key] = a
			go a.run(ctx)
		}
	}
	for key, a := range e.agents {
		if !want[key] {
			a.cancel()
			delete(e.agents, key)
		}
	}
	e.syncZtunnels(w)
}

// syncZtunnels (e.mu held) plays every running ztunnel pod
// (ztunnel.go) and stops those of pods that are gone.
func (e *Emulator) syncZtunnels(w *world) {
	want := map[string]bool{}
	for _, name := range w.order {
		v := w.views[name]
		for i := range v.pods {
			p := &v.pods[i]
			c := sidecarContainer(p)
			if !running(p) || !isZtunnelPod(p) || c == nil {
				continue
			}
			key := agentKey(name, p)
			want[key] = true
			if e.ztunnels[key] != nil || e.runCtx == nil {
				continue
			}
			ctx, cancel := context.WithCancel(e.runCtx)
			z := &ztunnel{cluster: name, kube: e.member(name).kube, pod: p.DeepCopy(), env: proxyEnv(c), cancel: cancel,
				done: make(chan struct{}), kick: e.requestSync, logf: e.logf}
			e.ztunnels[key] = z
			go z.run(ctx)
		}
	}
	for key, z := range e.ztunnels {
		if !want[key] {
			z.cancel()
			delete(e.ztunnels, key)
		}
	}
}

// ztunnelFor is the ztunnel playing the ztunnel pod on node, nil when none.
func (e *Emulator) ztunnelFor(cluster, node string) *ztunnel {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, z := range e.ztunnels {
		if z.cluster == cluster && z.pod.Spec.NodeName == node {
			return z
		}
	}
	return nil
}

// waitAgents waits for the agents to end with Run's context, so that none
// logs after Run returned.
func (e *Emulator) waitAgents() {
	e.mu.Lock()
	var done []chan struct{}
	for _, a := range e.agents {
		done = append(done, a.done)
	}
	for _, z := range e.ztunnels {
		done = append(done, z.done)
	}
	e.mu.Unlock()
	for _, d := range done {
		<-d
	}
}

// requestSync asks Run for a sync soon (an agent's state changed).
func (e *Emulator) requestSync() {
	select {
	case e.kick <- struct{}{}:
	default: // one is due anyway
	}
}

// gatewayAgent is the ready agent of a gateway pod of
// cluster with label istio=selector, nil when there is none.
func (e *Emulator) gatewayAgent(cluster, selector string) *agent {
	e.mu.Lock()
	var cands []*agent
	for _, a := range e.agents {
		if a.cluster == cluster && a.pod.Labels["istio"] == selector {
			cands = append(cands, a)
		}
	}
	e.mu.Unlock()
	for _, a := range cands {
		if a.ready() {
			return a
		}
	}
	return nil
}

// agentFor is the pod's agent, nil when it has none.
func (e *Emulator) agentFor(cluster string, p *corev1.Pod) *agent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.agents[agentKey(cluster, p)]
}

// proxyReady says whether the pod's sidecar is ready: always without a
// sidecar; else once its agent holds a certificate from istiod and
// istiod's clusters and endpoints.
func (e *Emulator) proxyReady(cluster string, p *corev1.Pod) bool {
	if sidecarContainer(p) == nil {
		return true
	}
	if isZtunnelPod(p) {
		// ztunnel is ready once istiod's workload view came.
		z := e.ztunnelFor(cluster, p.Spec.NodeName)
		return z != nil && z.pod.UID == p.UID && z.ready()
	}
	a := e.agentFor(cluster, p)
	return a != nil && a.ready()
}

// Proxies reports what each pod's proxy got from istiod.
func (e *Emulator) Proxies() []ProxyStatus {
	e.mu.Lock()
	var agents []*agent
	for _, a := range e.agents {
		agents = append(agents, a)
	}
	e.mu.Unlock()
	var out []ProxyStatus
	for _, a := range agents {
		out = append(out, a.status())
	}
	return out
}

// markDataPlaneReady tells kwok that the pod's data plane is in place (its
// listeners open, its Exec written), so that it may mark the pod Ready, as
// a kubelet does once a sidecar's readiness probe passes. The pod's UID
// guards against a pod of the same name that replaced it.
func (e *Emulator) markDataPlaneReady(ctx context.Context, cluster string, p *corev1.Pod) {
	m := e.member(cluster)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         p.UID,
		"annotations": map[string]string{lab.DataPlaneAnnotation: lab.DataPlaneReady},
	}})
	if _, err := m.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			e.logf("%s: mark pod %s/%s data plane ready: %v", cluster, p.Namespace, p.Name, err)
		}
		return
	}
	if seen, ok := e.firstSeen.LoadAndDelete(string(p.UID)); ok {
		e.logf("%s: pod %s/%s data plane ready %s after it ran", cluster, p.Namespace, p.Name, time.Since(seen.(time.Time)).Round(time.Millisecond))
	}
}

// writeExec gives pod its own kwok Exec, so that the processes exec'd in it
// call through its own capture address: the emulator then knows the caller.
// (A lab without kwok's Exec CRD leaves every pod on the node's.)
func (e *Emulator) writeExec(ctx context.Context, cluster string, p *corev1.Pod, capture string) bool {
	m := e.member(cluster)
	obj := lab.PodExec(cluster, p, capture)
	data, err := json.Marshal(obj.Object)
	if err == nil {
		_, err = m.dyn.Resource(lab.KwokExecGVR).Namespace(p.Namespace).Patch(ctx, p.Name, types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "flotilla-emulator", Force: ptr(true)})
	}
	if err != nil {
		e.logf("%s: write kwok Exec %s/%s: %v", cluster, p.Namespace, p.Name, err)
		return false
	}
	return true
}

func ptr[T any](v T) *T { return &v }

func serve(ln net.Listener, h func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			h(c)
		}()
	}
}

func (e *Emulator) closeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for addr, l := range e.listeners {
		l.ln.Close()
		delete(e.listeners, addr)
	}
}

func (e *Emulator) logf(format string, args ...any) {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	fmt.Fprintf(e.cfg.Log, "emulator: "+format+"\n", args...)
}
