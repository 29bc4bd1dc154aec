package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The lab runs a real istiod (pilot-discovery, built from scenarios/istio)
// for every istiod pod of a cluster, the way a kubelet runs a container:
// the container's args and environment from the pod spec (field, resource,
// Secret and ConfigMap references resolved), its volumes written under a
// root directory of its own and kept current as their sources change
// (Secrets, ConfigMaps, projected service-account tokens, downward API),
// restarted when it exits, stopped when the pod goes, and the pod's data
// plane marked ready once its readiness probe answers.
//
// Two things stand in for what a container runtime would give the process:
//   - its file system: istiod runs in the pod's root directory, and paths
//     under a volume's mount path, in args and env, are made relative to it
//     (istiod itself reads ./etc/cacerts, ./var/lib/istio/inject, ...);
//   - its network namespace: istiod's listener flags are given the pod's
//     loopback stand-in (Loopback), so the ports of its pod spec are bound
//     there and every istiod of the lab keeps the ports the charts declare.
//
// In-cluster API access (the kube-api-access volume and the
// KUBERNETES_SERVICE_* env) is a kubeconfig with the pod's bound
// service-account token, given with --kubeconfig when no kubeconfig named
// by KUBECONFIG exists: as istiod falls back to in-cluster config. An
// istiod that has one (an external istiod's istio-kubeconfig) and still
// reads the cluster it runs in through rest.InClusterConfig gets the real
// thing: the volume's files at their fixed path in a mount namespace of
// its own, and KUBERNETES_SERVICE_HOST/PORT naming the API server.

// istiodSelector picks the pods of the Deployments Istio's istiod chart
// renders (app: istiod on the pod template).
const istiodSelector = "app=istiod"

// istiodContainer is the container that runs pilot-discovery in those pods.
const istiodContainer = "discovery"

// IstiodInfo describes one running istiod, for tests and diagnostics.
type IstiodInfo struct {
	Namespace, Pod string
	// Address is the pod's loopback stand-in, where istiod's ports are bound.
	Address string
	// PID is the running process, 0 between restarts.
	PID int
	// Restarts counts exits after the first start.
	Restarts int
	// Started is when the current process started.
	Started time.Time
	// Ready is set once the readiness probe passed.
	Ready time.Time
	// Log is the process's log file.
	Log string
}

// istiodKubelet runs the istiods of one cluster.
type istiodKubelet struct {
	c   *Cluster
	bin string
	cs  kubernetes.Interface
	log io.Writer

	net  *privateNet // Options.PrivateAPIServers: where istiods run
	mu   sync.Mutex
	pods map[types.UID]*istiodPod
	wg   sync.WaitGroup
}

type istiodPod struct {
	k      *istiodKubelet
	pod    *corev1.Pod
	root   string // the container's file system
	access string // the in-cluster kubeconfig and its token
	cancel context.CancelFunc

	mu      sync.Mutex
	info    IstiodInfo
	written map[string]map[string][]byte // per volume: files last written
	tokens  map[string]cachedToken       // per volume/path
}

type cachedToken struct {
	token   []byte
	refresh time.Time
}

func newIstiodKubelet(c *Cluster, bin string, logw io.Writer) *istiodKubelet {
	return &istiodKubelet{c: c, bin: bin, cs: c.Client(), log: logw, pods: map[types.UID]*istiodPod{}}
}

// Run watches the cluster's istiod pods until ctx ends, then stops every
// istiod it started.
func (k *istiodKubelet) Run(ctx context.Context) {
	f := informers.NewSharedInformerFactoryWithOptions(k.cs, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = istiodSelector }))
	inf := f.Core().V1().Pods().Informer()
	onPod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			k.sync(ctx, p)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPod,
		UpdateFunc: func(_, o any) { onPod(o) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				k.stopPod(p.UID)
			}
		},
	})
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	k.mu.Lock()
	for _, p := range k.pods {
		p.cancel()
	}
	k.mu.Unlock()
	k.wg.Wait()
}

// Istiods lists the running istiods.
func (k *istiodKubelet) Istiods() []IstiodInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []IstiodInfo
	for _, p := range k.pods {
		p.mu.Lock()
		out = append(out, p.info)
		p.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b IstiodInfo) int {
		return strings.Compare(a.Namespace+"/"+a.Pod, b.Namespace+"/"+b.Pod)
	})
	return out
}

func (k *istiodKubelet) sync(ctx context.Context, pod *corev1.Pod) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		k.stopPod(pod.UID)
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if p, ok := k.pods[pod.UID]; ok {
		p.mu.Lock()
		p.pod = pod
		p.mu.Unlock()
		return
	}
	if pod.Spec.NodeName == "" || pod.Status.PodIP == "" || ctx.Err() != nil {
		return // not scheduled, or no address yet: a later update starts it
	}
	addr, ok := Loopback(net.ParseIP(pod.Status.PodIP))
	if !ok {
		fmt.Fprintf(k.log, "lab: %s: istiod pod %s/%s: address %s has no loopback stand-in\n", k.c.Name, pod.Namespace, pod.Name, pod.Status.PodIP)
		return
	}
	dir := filepath.Join(k.c.dir, "pods", pod.Namespace+"_"+pod.Name)
	pctx, cancel := context.WithCancel(ctx)
	p := &istiodPod{
		k: k, pod: pod, cancel: cancel,
		root:    filepath.Join(dir, "root"),
		access:  filepath.Join(dir, "kube-api-access"),
		written: map[string]map[string][]byte{},
		tokens:  map[string]cachedToken{},
		info: IstiodInfo{Namespace: pod.Namespace, Pod: pod.Name, Address: addr.String(),
			Log: filepath.Join(k.c.dir, "logs", "istiod-"+pod.Namespace+"-"+pod.Name+".log")},
	}
	k.pods[pod.UID] = p
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		p.run(pctx)
	}()
}

func (k *istiodKubelet) stopPod(uid types.UID) {
	k.mu.Lock()
	p, ok := k.pods[uid]
	delete(k.pods, uid)
	k.mu.Unlock()
	if ok {
		p.cancel()
	}
}

func (p *istiodPod) current() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pod
}

func (p *istiodPod) logf(format string, args ...any) {
	pod := p.current()
	fmt.Fprintf(p.k.log, "lab: %s: istiod %s/%s: %s\n", p.k.c.Name, pod.Namespace, pod.Name, fmt.Sprintf(format, args...))
}

// run starts istiod once its volumes can be written, keeps the volumes
// current, restarts istiod when it exits (with a growing delay, as a kubelet
// does), and stops it when ctx ends.
func (p *istiodPod) run(ctx context.Context) {
	for _, d := range []string{p.root, p.access} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			p.logf("%v", err)
			return
		}
	}
	backoff := time.Second
	waiting := ""
	for ctx.Err() == nil {
		if err := p.syncVolumes(ctx); err != nil {
			if err.Error() != waiting {
				p.logf("waiting to start: %v", err)
				waiting = err.Error()
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		proc, err := p.start(ctx)
		if err != nil {
			p.logf("start: %v", err)
			sleepCtx(ctx, backoff)
			continue
		}
		started := time.Now()
		probeCtx, stopProbe := context.WithCancel(ctx)
		go p.probe(probeCtx)
		tick := time.NewTicker(time.Second)
	running:
		for {
			select {
			case <-ctx.Done():
				grace := 5 * time.Second
				if g := p.current().Spec.TerminationGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
					grace = time.Duration(*g) * time.Second
				}
				proc.stop(grace)
				break running
			case <-proc.done:
				p.logf("exited (%v): %s", proc.err, tail(proc.log, 2))
				break running
			case <-tick.C:
				if err := p.syncVolumes(ctx); err != nil && ctx.Err() == nil {
					p.logf("volumes: %v", err)
				}
			}
		}
		tick.Stop()
		stopProbe()
		p.mu.Lock()
		p.info.PID = 0
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.info.Restarts++
		p.mu.Unlock()
		if time.Since(started) > 2*time.Minute {
			backoff = time.Second
		}
		sleepCtx(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// start runs pilot-discovery with the container's args and env.
func (p *istiodPod) start(ctx context.Context) (*process, error) {
	pod := p.current()
	ctr := istiodContainerOf(pod)
	if ctr == nil {
		return nil, fmt.Errorf("no container %q", istiodContainer)
	}
	env, err := p.env(ctx, pod, ctr)
	if err != nil {
		return nil, err
	}
	args := expandAll(ctr.Args, env)
	// The image's entrypoint is pilot-discovery; a command naming it is the same.
	if len(ctr.Command) > 0 {
		args = append(expandAll(ctr.Command[1:], env), args...)
	}
	args = rootPaths(args, p.root, ctr.VolumeMounts)
	args = istiodListenArgs(args, p.info.Address)
	kc, err := p.writeAccessKubeconfig(ctx, pod)
	if err != nil {
		return nil, err
	}
	// Without a KUBECONFIG file istiod reads the cluster it runs in: here
	// through the pod's identity as a kubeconfig (client-go falls back to
	// in-cluster config when the KUBECONFIG files are missing).
	if !p.hasKubeconfig(env) {
		args = append(args, "--kubeconfig="+kc)
	}
	// An external istiod that watches remote secrets where it runs
	// (Istio's multicluster secret controller) reads that cluster through
	// rest.InClusterConfig, as every pod can, whether or not its
	// istio-kubeconfig (an optional volume) is there; without it, it
	// panics. So does an istiod with a KUBECONFIG of its own.
	inCluster := p.hasKubeconfig(env) || envTrue(env, "EXTERNAL_ISTIOD") && envTrue(env, "LOCAL_CLUSTER_SECRET_WATCHER")
	argv := append([]string{p.k.bin}, args...)
	sys := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if inCluster {
		// rest.InClusterConfig's token and CA paths are fixed.
		if argv, err = p.inClusterCommand(argv); err != nil {
			return nil, err
		}
		// Go makes the new namespace's mounts private before the shell runs.
		sys.Unshareflags = syscall.CLONE_NEWNS
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.k.c.Server, "https://"))
		env = append(env, "KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT="+port)
	}
	if n := p.k.net; n != nil {
		// Its own network namespace (PrivateAPIServers), around the mount
		// namespace if any: ip netns exec makes one of its own too, slave
		// to ours, so the bind mount stays istiod's.
		if err := n.inward(p.info.Address, listenPorts(args, p.info.Address)); err != nil {
			return nil, err
		}
		argv = n.command(argv)
	}
	lf, err := os.OpenFile(p.info.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = sys
	cmd.Dir = p.root
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	proc := &process{name: "istiod " + pod.Namespace + "/" + pod.Name, cmd: cmd, log: p.info.Log, done: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		lf.Close()
		close(proc.done)
	}()
	p.mu.Lock()
	p.info.PID, p.info.Started, p.info.Ready = cmd.Process.Pid, time.Now(), time.Time{}
	p.mu.Unlock()
	p.logf("started (pid %d) on %s", cmd.Process.Pid, p.info.Address)
	return proc, nil
}

func istiodContainerOf(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == istiodContainer {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// envTrue says whether env sets name to true (as Istio's boolean
// features read it).
func envTrue(env []string, name string) bool {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, name+"="); ok {
			b, err := strconv.ParseBool(v)
			return err == nil && b
		}
	}
	return false
}

// hasKubeconfig: a KUBECONFIG whose files exist is what istiod reads;
// otherwise it uses in-cluster config.
func (p *istiodPod) hasKubeconfig(env []string) bool {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "KUBECONFIG="); ok {
			for _, f := range filepath.SplitList(v) {
				if fileExists(f) {
					return true
				}
			}
		}
	}
	return false
}

// writeAccessKubeconfig is the pod's in-cluster identity: its service
// account's token bound to the pod, refreshed by syncVolumes, read by
// client-go from tokenFile as it changes; beside it the files of the
// kube-api-access volume (token, ca.crt, namespace) for inClusterCommand.
func (p *istiodPod) writeAccessKubeconfig(ctx context.Context, pod *corev1.Pod) (string, error) {
	tok, err := p.token(ctx, pod, "kube-api-access", nil, 3607)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(p.access, "token"), tok); err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(p.access, "ca.crt"), p.k.c.CAData); err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(p.access, "namespace"), []byte(pod.Namespace)); err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["in-cluster"] = &clientcmdapi.Cluster{Server: p.k.c.Server, CertificateAuthorityData: p.k.c.CAData}
	cfg.AuthInfos["in-cluster"] = &clientcmdapi.AuthInfo{TokenFile: filepath.Join(p.access, "token")}
	cfg.Contexts["in-cluster"] = &clientcmdapi.Context{Cluster: "in-cluster", AuthInfo: "in-cluster", Namespace: pod.Namespace}
	cfg.CurrentContext = "in-cluster"
	path := filepath.Join(p.access, "kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// serviceAccountDir is where rest.InClusterConfig reads the pod's token
// and the cluster's CA (the kubelet's kube-api-access mount).
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// inClusterCommand runs pilot-discovery in a mount namespace of its own in
// which the pod's kube-api-access files are at serviceAccountDir, as a
// container sees them; the host keeps only the empty mount point. It
// needs root (CAP_SYS_ADMIN), as a kubelet does.
func (p *istiodPod) inClusterCommand(argv []string) ([]string, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("in-cluster config for an istiod with its own KUBECONFIG needs a mount namespace: run the lab as root")
	}
	if err := os.MkdirAll(serviceAccountDir, 0o755); err != nil {
		return nil, fmt.Errorf("mount point %s: %w", serviceAccountDir, err)
	}
	return append([]string{"/bin/sh", "-c", `mount --bind "$0" ` + serviceAccountDir + ` && exec "$@"`, p.access}, argv...), nil
}

// token returns a service-account token for the pod's account, bound to
// the pod, from cache until 80% of its life has passed (a kubelet's rule).
func (p *istiodPod) token(ctx context.Context, pod *corev1.Pod, cacheKey string, audiences []string, seconds int64) ([]byte, error) {
	p.mu.Lock()
	c, ok := p.tokens[cacheKey]
	p.mu.Unlock()
	if ok && time.Now().Before(c.refresh) {
		return c.token, nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := p.k.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: &seconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: token for serviceaccount %s/%s: %w", p.k.c.Name, pod.Namespace, sa, err)
	}
	life := time.Until(tr.Status.ExpirationTimestamp.Time)
	c = cachedToken{token: []byte(tr.Status.Token), refresh: time.Now().Add(life * 8 / 10)}
	p.mu.Lock()
	p.tokens[cacheKey] = c
	p.mu.Unlock()
	return c.token, nil
}

// env is the container's environment as a kubelet would build it, with
// paths under volume mounts made relative to the pod's root.
func (p *istiodPod) env(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	set("HOME", p.root)
	set("HOSTNAME", pod.Name)
	for _, ef := range ctr.EnvFrom {
		data, err := p.envFromSource(ctx, pod.Namespace, ef)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			set(ef.Prefix+k, v)
		}
	}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vars))
			continue
		}
		v, err := p.envValue(ctx, pod, ctr, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+rootPath(vars[k], p.root, ctr.VolumeMounts))
	}
	return out, nil
}

func (p *istiodPod) envFromSource(ctx context.Context, ns string, ef corev1.EnvFromSource) (map[string]string, error) {
	switch {
	case ef.ConfigMapRef != nil:
		cm, err := p.k.cs.CoreV1().ConfigMaps(ns).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && ptrTrue(ef.ConfigMapRef.Optional) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("configmap %s/%s: %w", ns, ef.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case ef.SecretRef != nil:
		s, err := p.k.cs.CoreV1().Secrets(ns).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && ptrTrue(ef.SecretRef.Optional) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", ns, ef.SecretRef.Name, err)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

func (p *istiodPod) envValue(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container, src *corev1.EnvVarSource) (string, error) {
	switch {
	case src.FieldRef != nil:
		return fieldValue(pod, src.FieldRef.FieldPath)
	case src.ResourceFieldRef != nil:
		return p.resourceValue(ctx, pod, ctr, src.ResourceFieldRef)
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := p.k.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && ptrTrue(r.Optional) {
				return "", nil
			}
			return "", fmt.Errorf("configmap %s/%s: %w", pod.Namespace, r.Name, err)
		}
		return cm.Data[r.Key], nil
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := p.k.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && ptrTrue(r.Optional) {
				return "", nil
			}
			return "", fmt.Errorf("secret %s/%s: %w", pod.Namespace, r.Name, err)
		}
		return string(s.Data[r.Key]), nil
	}
	return "", nil
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// fieldValue is the downward API's value of a pod field.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if rest, ok := strings.CutPrefix(path, prefix+"['"); ok {
			return m[strings.TrimSuffix(rest, "']")], nil
		}
	}
	return "", fmt.Errorf("field %s not supported by the lab", path)
}

// resourceValue: a container without a limit sees the node's allocatable
// amount; the lab's node for real processes is this host.
func (p *istiodPod) resourceValue(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container, r *corev1.ResourceFieldSelector) (string, error) {
	c := ctr
	if r.ContainerName != "" {
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == r.ContainerName {
				c = &pod.Spec.Containers[i]
			}
		}
	}
	kind, name, _ := strings.Cut(r.Resource, ".")
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		switch name {
		case "cpu":
			q = *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)
		default:
			n, err := p.k.cs.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
			if err != nil {
				return "", fmt.Errorf("node %s: %w", pod.Spec.NodeName, err)
			}
			q = n.Status.Allocatable[corev1.ResourceName(name)]
		}
	}
	div := r.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	// Rounded up, as the kubelet's downward API does.
	v := math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue()))
	return strconv.FormatInt(int64(v), 10), nil
}

// expand substitutes $(VAR) with earlier variables, as the kubelet does;
// $$ escapes, unknown references stay as written.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
				name := s[i+2 : i+2+end]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
				} else {
					b.WriteString(s[i : i+3+end])
				}
				i += 2 + end
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func expandAll(args []string, env []string) []string {
	vars := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		vars[k] = v
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, vars)
	}
	return out
}

// rootPath maps an absolute path under a volume's mount path into the pod's
// root directory; anything else is returned as is. In "--flag=/path" only
// the value is mapped.
func rootPath(s, root string, mounts []corev1.VolumeMount) string {
	prefix, val := "", s
	if strings.HasPrefix(s, "-") {
		if i := strings.IndexByte(s, '='); i >= 0 {
			prefix, val = s[:i+1], s[i+1:]
		}
	}
	for _, m := range mounts {
		mp := filepath.Clean(m.MountPath)
		if val == mp || strings.HasPrefix(val, mp+"/") {
			return prefix + filepath.Join(root, val)
		}
	}
	return s
}

func rootPaths(args []string, root string, mounts []corev1.VolumeMount) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = rootPath(a, root, mounts)
	}
	return out
}

// istiodListenArgs binds pilot-discovery's listeners on the pod's address:
// each listener flag the args give keeps its port, and one they leave out
// gets its default port. --ctrlz_address takes the address alone.
func istiodListenArgs(args []string, addr string) []string {
	flags := []struct{ name, port string }{
		{"httpAddr", "8080"}, {"grpcAddr", "15010"}, {"secureGRPCAddr", "15012"},
		{"httpsAddr", "15017"}, {"monitoringAddr", "15014"},
	}
	var out []string
	ports := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		known := strings.HasPrefix(a, "-") && slices.ContainsFunc(flags, func(f struct{ name, port string }) bool { return f.name == name })
		if known || (strings.HasPrefix(a, "-") && name == "ctrlz_address") {
			if !hasVal && i+1 < len(args) {
				val = args[i+1]
				i++
			}
			if _, port, err := net.SplitHostPort(val); err == nil {
				ports[name] = port
			}
			continue
		}
		out = append(out, a)
	}
	for _, f := range flags {
		port := f.port
		if p, ok := ports[f.name]; ok {
			port = p
		}
		out = append(out, "--"+f.name+"="+net.JoinHostPort(addr, port))
	}
	return append(out, "--ctrlz_address="+addr)
}

// probe runs the container's readiness probe (an HTTP GET) against the
// pod's address and marks the pod's data plane ready on the first success.
func (p *istiodPod) probe(ctx context.Context) {
	ctr := istiodContainerOf(p.current())
	if ctr == nil || ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil {
		p.markReady(ctx)
		return
	}
	pr := ctr.ReadinessProbe
	port := resolvePort(pr.HTTPGet.Port, ctr)
	url := fmt.Sprintf("http://%s%s", net.JoinHostPort(p.info.Address, strconv.Itoa(port)), pr.HTTPGet.Path)
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	client := &http.Client{Timeout: timeout}
	defer client.CloseIdleConnections()
	sleepCtx(ctx, time.Duration(pr.InitialDelaySeconds)*time.Second)
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 400 {
				p.markReady(ctx)
				return
			}
		}
		// Probe faster than the pod spec says at first: tests wait on it.
		sleepCtx(ctx, min(period, 500*time.Millisecond))
	}
}

func resolvePort(port intstr.IntOrString, ctr *corev1.Container) int {
	if port.Type == intstr.Int {
		return port.IntValue()
	}
	for _, cp := range ctr.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return 0
}

func (p *istiodPod) markReady(ctx context.Context) {
	pod := p.current()
	p.mu.Lock()
	p.info.Ready = time.Now()
	since := p.info.Ready.Sub(p.info.Started)
	p.mu.Unlock()
	p.logf("ready %s after start", since.Round(10*time.Millisecond))
	// DataPlaneAnnotation: here, istiod's own readiness probe passed.
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, DataPlaneAnnotation, DataPlaneReady))
	if _, err := p.k.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && ctx.Err() == nil {
		p.logf("mark ready: %v", err)
	}
}

// syncVolumes writes every volume of the container from its sources, and
// fails while a required source is missing (the kubelet would not start the
// container either).
func (p *istiodPod) syncVolumes(ctx context.Context) error {
	pod := p.current()
	ctr := istiodContainerOf(pod)
	if ctr == nil {
		return fmt.Errorf("no container %q", istiodContainer)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range ctr.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			return fmt.Errorf("volume %s not in the pod", m.Name)
		}
		files, err := p.volumeFiles(ctx, pod, v)
		if err != nil {
			return fmt.Errorf("volume %s: %w", m.Name, err)
		}
		dir := filepath.Join(p.root, m.MountPath)
		if m.SubPath != "" {
			return fmt.Errorf("volume %s: subPath not supported by the lab", m.Name)
		}
		if files == nil { // emptyDir and the like: a directory to write in
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			continue
		}
		if sameFiles(p.written[dir], files) {
			continue
		}
		if err := writeVolume(dir, files); err != nil {
			return fmt.Errorf("volume %s: %w", m.Name, err)
		}
		p.written[dir] = files
	}
	if fileExists(filepath.Join(p.access, "kubeconfig")) {
		tok, err := p.token(ctx, pod, "kube-api-access", nil, 3607)
		if err != nil {
			return err
		}
		if cur, _ := os.ReadFile(filepath.Join(p.access, "token")); !bytes.Equal(cur, tok) {
			return writeFileAtomic(filepath.Join(p.access, "token"), tok)
		}
	}
	return nil
}

// volumeFiles is a volume's content: file path → bytes; nil for a volume
// that is a plain directory.
func (p *istiodPod) volumeFiles(ctx context.Context, pod *corev1.Pod, v corev1.Volume) (map[string][]byte, error) {
	switch {
	case v.EmptyDir != nil:
		return nil, nil
	case v.Secret != nil:
		return p.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
	case v.ConfigMap != nil:
		return p.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
	case v.DownwardAPI != nil:
		return downwardFiles(pod, v.DownwardAPI.Items)
	case v.Projected != nil:
		files := map[string][]byte{}
		for i, s := range v.Projected.Sources {
			var got map[string][]byte
			var err error
			switch {
			case s.Secret != nil:
				got, err = p.secretFiles(ctx, pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional)
			case s.ConfigMap != nil:
				got, err = p.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional)
			case s.DownwardAPI != nil:
				got, err = downwardFiles(pod, s.DownwardAPI.Items)
			case s.ServiceAccountToken != nil:
				t := s.ServiceAccountToken
				secs := int64(3600)
				if t.ExpirationSeconds != nil {
					secs = *t.ExpirationSeconds
				}
				var aud []string
				if t.Audience != "" {
					aud = []string{t.Audience}
				}
				var tok []byte
				tok, err = p.token(ctx, pod, fmt.Sprintf("%s/%d", v.Name, i), aud, secs)
				got = map[string][]byte{t.Path: tok}
			case s.ClusterTrustBundle != nil:
				if !ptrTrue(s.ClusterTrustBundle.Optional) {
					err = fmt.Errorf("clusterTrustBundle sources not supported by the lab")
				}
			}
			if err != nil {
				return nil, err
			}
			for k, b := range got {
				files[k] = b
			}
		}
		return files, nil
	}
	return nil, fmt.Errorf("volume type not supported by the lab")
}

func (p *istiodPod) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	s, err := p.k.cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptrTrue(optional) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return keyFiles(s.Data, items), nil
}

// rootCAConfigMap is what kube-controller-manager's root-ca-cert-publisher
// writes in every namespace; the lab does not run that controller, so the
// kubelet gives the pod's kube-api-access volume the cluster's CA itself.
const rootCAConfigMap = "kube-root-ca.crt"

func (p *istiodPod) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	cm, err := p.k.cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && name == rootCAConfigMap {
		return keyFiles(map[string][]byte{"ca.crt": p.k.c.CAData}, items), nil
	}
	if apierrors.IsNotFound(err) && ptrTrue(optional) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items), nil
}

// keyFiles: every key as a file of its name, or only the items listed, at their paths.
func keyFiles(data map[string][]byte, items []corev1.KeyToPath) map[string][]byte {
	files := map[string][]byte{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
		return files
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			files[it.Path] = v
		}
	}
	return files
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downward API item %s: only fieldRef is supported by the lab", it.Path)
		}
		var v string
		switch it.FieldRef.FieldPath {
		case "metadata.labels", "metadata.annotations":
			m := pod.Labels
			if it.FieldRef.FieldPath == "metadata.annotations" {
				m = pod.Annotations
			}
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var lines []string
			for _, k := range keys {
				lines = append(lines, fmt.Sprintf("%s=%q", k, m[k]))
			}
			v = strings.Join(lines, "\n")
		default:
			var err error
			if v, err = fieldValue(pod, it.FieldRef.FieldPath); err != nil {
				return nil, err
			}
		}
		files[it.Path] = []byte(v)
	}
	return files, nil
}

func sameFiles(a, b map[string][]byte) bool {
	if a == nil || len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if w, ok := a[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// writeVolume swaps a volume's content in at once, as the kubelet's atomic
// writer does: the files go in a fresh directory, the ..data symlink is
// renamed onto it, and each file name is a symlink through ..data. A
// watcher of the directory (istiod's of ./etc/cacerts) sees one change.
func writeVolume(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ts, err := os.MkdirTemp(dir, "..")
	if err != nil {
		return err
	}
	for name, b := range files {
		p := filepath.Join(ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	// Top-level names link through ..data; names no longer there go.
	top := map[string]bool{}
	for name := range files {
		first, _, _ := strings.Cut(name, "/")
		top[first] = true
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "..") && !top[e.Name()] {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	if old != "" && old != filepath.Base(ts) {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
