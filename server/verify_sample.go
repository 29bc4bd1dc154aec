package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// The sample of verify: Istio's helloworld and a curl client in namespace
// sample of each workload cluster, its rollout, its requests and its removal.

// injectionLabel selects the cluster's control plane for injection: the
// default revision takes istio-injection=enabled, another istio.io/rev.
func injectionLabel(ctx context.Context, kc *kube.Cluster) (string, string) {
	gvr := schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}
	list, err := kc.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) == 0 {
		return "istio-injection", "enabled" // upstream charts: the default revision
	}
	for _, it := range list.Items {
		if it.GetName() == "default" {
			return "istio-injection", "enabled"
		}
	}
	return "istio.io/rev", list.Items[0].GetName()
}

func helloImage(version string) (string, []*corev1ac.EnvVarApplyConfiguration) {
	// Istio publishes v1 and v2; other versions run v1's app, which answers
	// with $SERVICE_VERSION.
	if version == "v1" || version == "v2" {
		return "docker.io/istio/examples-helloworld-" + version + ":1.0", nil
	}
	return "docker.io/istio/examples-helloworld-v1:1.0", []*corev1ac.EnvVarApplyConfiguration{corev1ac.EnvVar().WithName("SERVICE_VERSION").WithValue(version)}
}

// waitNamespaceGone waits while the sample's namespace is being deleted
// (a verify run right after the sample was removed): an apply into it
// succeeds for what still exists, but nothing new may be created there, so
// the sample would never come up.
func (h *Hub) waitNamespaceGone(ctx context.Context, c *verifyCluster) error {
	said := false
	for {
		ns, err := c.kc.Kube.CoreV1().Namespaces().Get(ctx, sampleNamespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && ns.DeletionTimestamp == nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: read namespace %s: %w", c.name, sampleNamespace, err)
		}
		if !said {
			h.progressf(c.name, "namespace %s is being deleted: waiting for it to go before writing the sample", sampleNamespace)
			said = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: namespace %s still being deleted: %w", c.name, sampleNamespace, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (h *Hub) deploySample(ctx context.Context, clusters []*verifyCluster) error {
	return forEachCluster(clusters, func(c *verifyCluster) error {
		key, value := injectionLabel(ctx, c.kc)
		svcLabels := map[string]string{"app": helloService, "service": helloService}
		if c.ambient {
			// No sidecars: ztunnel carries the namespace's pods, and only a
			// global service answers from the other clusters.
			key, value = deploy.DataplaneModeLabel, string(deploy.DataplaneAmbient)
			if !c.local {
				svcLabels[deploy.GlobalServiceLabel] = "true"
			}
		}
		kc := c.kc.Kube
		if err := h.waitNamespaceGone(ctx, c); err != nil {
			return err
		}
		ns := corev1ac.Namespace(sampleNamespace).WithLabels(map[string]string{key: value})
		if _, err := kc.CoreV1().Namespaces().Apply(ctx, ns, c.kc.As(kube.ManagerVerify).ApplyOptions()); err != nil {
			return fmt.Errorf("%s: write namespace %s: %w", c.name, sampleNamespace, err)
		}
		svc := corev1ac.Service(helloService, sampleNamespace).
			WithLabels(svcLabels).
			WithSpec(corev1ac.ServiceSpec().
				WithSelector(map[string]string{"app": helloService}).
				WithPorts(corev1ac.ServicePort().WithName("http").WithPort(helloPort).WithTargetPort(intstr.FromInt32(helloPort))))
		if _, err := kc.CoreV1().Services(sampleNamespace).Apply(ctx, svc, c.kc.As(kube.ManagerVerify).ApplyOptions()); err != nil {
			return fmt.Errorf("%s: write service %s/%s: %w", c.name, sampleNamespace, helloService, err)
		}
		image, env := helloImage(c.version)
		labels := map[string]string{"app": helloService, "version": c.version}
		hello := appsv1ac.Deployment(helloService+"-"+c.version, sampleNamespace).
			WithLabels(labels).
			WithSpec(appsv1ac.DeploymentSpec().
				WithReplicas(1).
				WithSelector(metav1ac.LabelSelector().WithMatchLabels(labels)).
				WithTemplate(corev1ac.PodTemplateSpec().WithLabels(labels).WithSpec(corev1ac.PodSpec().
					WithContainers(corev1ac.Container().WithName(helloService).WithImage(image).WithEnv(env...).
						WithImagePullPolicy(corev1.PullIfNotPresent).
						WithPorts(corev1ac.ContainerPort().WithContainerPort(helloPort))))))
		if _, err := kc.AppsV1().Deployments(sampleNamespace).Apply(ctx, hello, c.kc.As(kube.ManagerVerify).ApplyOptions()); err != nil {
			return fmt.Errorf("%s: write deployment %s/%s-%s: %w", c.name, sampleNamespace, helloService, c.version, err)
		}
		sa := corev1ac.ServiceAccount(curlName, sampleNamespace)
		if _, err := kc.CoreV1().ServiceAccounts(sampleNamespace).Apply(ctx, sa, c.kc.As(kube.ManagerVerify).ApplyOptions()); err != nil {
			return fmt.Errorf("%s: write serviceaccount %s/%s: %w", c.name, sampleNamespace, curlName, err)
		}
		cl := map[string]string{"app": curlName}
		curl := appsv1ac.Deployment(curlName, sampleNamespace).
			WithLabels(cl).
			WithSpec(appsv1ac.DeploymentSpec().
				WithReplicas(1).
				WithSelector(metav1ac.LabelSelector().WithMatchLabels(cl)).
				WithTemplate(corev1ac.PodTemplateSpec().WithLabels(cl).WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(curlName).
					WithTerminationGracePeriodSeconds(0).
					WithContainers(corev1ac.Container().WithName(curlName).WithImage(curlImage).
						WithCommand("/bin/sleep", "infinity").
						WithImagePullPolicy(corev1.PullIfNotPresent)))))
		if _, err := kc.AppsV1().Deployments(sampleNamespace).Apply(ctx, curl, c.kc.As(kube.ManagerVerify).ApplyOptions()); err != nil {
			return fmt.Errorf("%s: write deployment %s/%s: %w", c.name, sampleNamespace, curlName, err)
		}
		h.progressf(c.name, "namespace %s (%s=%s), service %s, deployments %s-%s and %s",
			sampleNamespace, key, value, helloService, helloService, c.version, curlName)
		return nil
	})
}

// waitRollouts waits until every deployment has its updated replicas
// available, printing a line whenever one's progress changes.
func (h *Hub) waitRollouts(ctx context.Context, clusters []*verifyCluster) error {
	return forEachCluster(clusters, func(c *verifyCluster) error {
		names := []string{helloService + "-" + c.version, curlName}
		last := map[string]string{}
		for {
			ready := 0
			for _, n := range names {
				d, err := c.kc.Kube.AppsV1().Deployments(sampleNamespace).Get(ctx, n, metav1.GetOptions{})
				if err != nil {
					if ctx.Err() != nil {
						return notRolledOut(c, names, ctx.Err()) // the deadline passed during the read
					}
					return fmt.Errorf("%s: read deployment %s/%s: %w", c.name, sampleNamespace, n, err)
				}
				line := rolloutLine(d)
				if line != last[n] {
					h.progressf(c.name, "deployment %s/%s: %s", sampleNamespace, n, line)
					last[n] = line
				}
				if rolledOut(d) {
					ready++
				}
			}
			if ready == len(names) {
				return nil
			}
			select {
			case <-ctx.Done():
				return notRolledOut(c, names, ctx.Err())
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
}

// notRolledOut says, once verify's deadline passed (a short grace to read
// with), which of the sample's deployments in c did not roll out and why.
func notRolledOut(c *verifyCluster, names []string, cause error) error {
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var why []string
	for _, n := range names {
		if d, err := c.kc.Kube.AppsV1().Deployments(sampleNamespace).Get(rctx, n, metav1.GetOptions{}); err == nil && !rolledOut(d) {
			detail := fmt.Sprintf("deployment %s/%s %s", sampleNamespace, n, rolloutLine(d))
			if pods := notReady(rctx, c, d.Spec.Template.Labels["app"]); pods != "" {
				detail += ": " + pods
			}
			if f := replicaFailure(d); f != "" {
				detail += ": " + f
			}
			why = append(why, detail)
		}
	}
	return fmt.Errorf("%s: sample pods not Ready in time (the data plane of each must be ready before verify calls through it): %s: %w",
		c.name, strings.Join(why, "; "), cause)
}

// replicaFailure is why the deployment's pods could not be created (its
// ReplicaFailure condition: an admission webhook that refused or could not
// be called, such as a sidecar injector istiod does not answer), "" if none.
func replicaFailure(d *appsv1.Deployment) string {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
			return fmt.Sprintf("pods not created (%s): %s", c.Reason, c.Message)
		}
	}
	return ""
}

func rolloutLine(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if rolledOut(d) {
		return fmt.Sprintf("%d/%d available", d.Status.AvailableReplicas, want)
	}
	return fmt.Sprintf("%d/%d updated, %d available", d.Status.UpdatedReplicas, want, d.Status.AvailableReplicas)
}

func rolledOut(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
		d.Status.AvailableReplicas == want && d.Status.Replicas == want
}

// runRequests runs n requests from each cluster's curl pod, clusters in
// parallel; it returns per client counts and the mean time of a request.
func (h *Hub) runRequests(ctx context.Context, clusters []*verifyCluster, n int) ([]VerifyClient, float64) {
	out := make([]VerifyClient, len(clusters))
	var total time.Duration
	var mu sync.Mutex
	_ = forEachCluster(clusters, func(c *verifyCluster) error {
		i := indexOf(clusters, c)
		cl := VerifyClient{Cluster: c.name, Requests: n, Answers: map[string]int{}}
		pod, err := curlPod(ctx, c)
		if err != nil {
			cl.Failures, cl.LastFailure, cl.Errors = n, err.Error(), []string{err.Error()}
			out[i] = cl
			return nil
		}
		cl.Pod = pod
		start := time.Now()
		for range n {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			stdout, err := execIn(rctx, c.kc, sampleNamespace, pod, curlName, []string{"curl", "-s", helloRequestURL})
			cancel()
			if mm := helloAnswer.FindStringSubmatch(stdout); err == nil && mm != nil {
				cl.Answers[mm[1]]++
				continue
			}
			cl.Failures++
			switch {
			case err != nil:
				cl.LastFailure = err.Error()
			case strings.TrimSpace(stdout) == "":
				cl.LastFailure = "empty answer"
			default:
				cl.LastFailure = strings.TrimSpace(stdout)
			}
			if len(cl.Errors) < maxVerifyErrors && !slices.Contains(cl.Errors, cl.LastFailure) {
				cl.Errors = append(cl.Errors, cl.LastFailure)
			}
		}
		mu.Lock()
		total += time.Since(start)
		mu.Unlock()
		h.progressf(c.name, "%d requests from %s/%s in %s", n, sampleNamespace, pod, time.Since(start).Round(time.Millisecond))
		out[i] = cl
		return nil
	})
	mean := float64(total.Microseconds()) / 1000 / float64(n*len(clusters))
	return out, mean
}

func indexOf(cs []*verifyCluster, c *verifyCluster) int {
	for i := range cs {
		if cs[i] == c {
			return i
		}
	}
	return -1
}

func curlPod(ctx context.Context, c *verifyCluster) (string, error) {
	pods, err := c.kc.Kube.CoreV1().Pods(sampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + curlName})
	if err != nil {
		return "", fmt.Errorf("%s: list pods %s/app=%s: %w", c.name, sampleNamespace, curlName, err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("%s: no Ready curl pod in %s", c.name, sampleNamespace)
}

// podReady: the pod's Ready condition, which with a sidecar includes the
// proxy's own readiness.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// notReady names the sample pods of deployment d's app that are not Ready,
// with the reason their Ready condition gives, for a rollout that timed out.
func notReady(ctx context.Context, c *verifyCluster, app string) string {
	pods, err := c.kc.Kube.CoreV1().Pods(sampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return ""
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || podReady(&p) {
			continue
		}
		why := string(p.Status.Phase)
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && (cond.Reason != "" || cond.Message != "") {
				why = strings.TrimSpace(cond.Reason + " " + cond.Message)
			}
		}
		out = append(out, fmt.Sprintf("pod %s/%s not Ready (%s)", sampleNamespace, p.Name, why))
	}
	return strings.Join(out, ", ")
}

// execIn runs cmd in a pod's container through the API server (WebSocket,
// falling back to SPDY, as kubectl exec does) and returns its stdout.
func execIn(ctx context.Context, kc *kube.Cluster, ns, pod, container string, cmd []string) (string, error) {
	req := kc.Kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(kc.Config, http.MethodGet, req.URL().String())
	if err != nil {
		return "", fmt.Errorf("%s: exec in %s/%s: %w", kc.Name, ns, pod, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(kc.Config, http.MethodPost, req.URL())
	if err != nil {
		return "", fmt.Errorf("%s: exec in %s/%s: %w", kc.Name, ns, pod, err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", fmt.Errorf("%s: exec in %s/%s: %w", kc.Name, ns, pod, err)
	}
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return stdout.String(), fmt.Errorf("%s: exec in %s/%s: %w: %s", kc.Name, ns, pod, err, msg)
		}
		return stdout.String(), fmt.Errorf("%s: exec in %s/%s: %w", kc.Name, ns, pod, err)
	}
	return stdout.String(), nil
}

// diagnoseVerify names why a version is missing: the checks of flotilla
// check that fail, and sample pods that run without a sidecar.
func (h *Hub) diagnoseVerify(ctx context.Context, p *plan, clusters []*verifyCluster) []Check {
	var out []Check
	checks, err := h.check(ctx, p)
	if err != nil {
		out = append(out, Check{Name: "check", Message: err.Error(), Hint: "run flotilla check"})
	}
	for _, c := range checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	for _, c := range clusters {
		if c.ambient {
			continue // no sidecars to look for
		}
		pods, err := c.kc.Kube.CoreV1().Pods(sampleNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			out = append(out, Check{Name: "sidecar injected", Cluster: c.name, Message: err.Error()})
			continue
		}
		var bare []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && !hasSidecar(&p) {
				bare = append(bare, p.Name)
			}
		}
		if len(bare) > 0 {
			sort.Strings(bare)
			key, value := injectionLabel(ctx, c.kc)
			out = append(out, Check{Name: "sidecar injected", Cluster: c.name,
				Message: fmt.Sprintf("no sidecar injected in %s/%s", sampleNamespace, strings.Join(bare, ", ")),
				Hint: fmt.Sprintf("check that namespace %s has %s=%s and that the cluster's istiod (or its primary's, for a remote) runs and is reachable; then restart the pods",
					sampleNamespace, key, value)})
		}
	}
	return out
}

// hasSidecar: the istio-proxy container, or the injector's status annotation.
func hasSidecar(p *corev1.Pod) bool {
	if p.Annotations["sidecar.istio.io/status"] != "" {
		return true
	}
	for _, c := range append(append([]corev1.Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
		if c.Name == "istio-proxy" {
			return true
		}
	}
	return false
}

func (h *Hub) removeSample(ctx context.Context, clusters []*verifyCluster) {
	_ = forEachCluster(clusters, func(c *verifyCluster) error {
		err := c.kc.Kube.CoreV1().Namespaces().Delete(ctx, sampleNamespace, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			h.progressf(c.name, "delete namespace %s: %v", sampleNamespace, err)
			return nil
		}
		// Wait for it to go, so that the next verify does not meet a
		// terminating namespace.
		for ctx.Err() == nil {
			if _, err := c.kc.Kube.CoreV1().Namespaces().Get(ctx, sampleNamespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				h.progressf(c.name, "removed namespace %s", sampleNamespace)
				return nil
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
		h.progressf(c.name, "namespace %s still terminating", sampleNamespace)
		return nil
	})
}

// forEachCluster runs f for every cluster in parallel and joins the errors.
func forEachCluster(clusters []*verifyCluster, f func(*verifyCluster) error) error {
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(c)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
