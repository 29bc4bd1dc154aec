package gateways

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// What Istio's injection and a rollout restart leave on pods and templates.
const (
	// SidecarStatusAnnotation is written by Istio's injector on every pod it
	// injected, naming the revision among other things.
	SidecarStatusAnnotation = "sidecar.istio.io/status"
	// RestartedAtAnnotation on a pod template is what `kubectl rollout
	// restart` sets to replace a Deployment's pods.
	RestartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"
	// DefaultRevision is the revision of pods that name none.
	DefaultRevision = "default"
)

// InjectionRevision is the revision whose webhook injects the gateway's pods.
func (g Gateway) InjectionRevision() string {
	if g.Revision == "" {
		return DefaultRevision
	}
	return g.Revision
}

// InjectionWebhookReady reports whether cluster c has revision rev's
// injection webhook in place: a MutatingWebhookConfiguration labelled
// istio.io/rev=<rev> whose every webhook has a caBundle. Istio's charts
// render the configuration without one; the revision's istiod patches it in
// once it serves, so a pod created before then is admitted uninjected.
func InjectionWebhookReady(ctx context.Context, c *kube.Cluster, rev string) (bool, error) {
	list, err := c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(labels.Set{RevisionLabel: rev}).String(),
	})
	if err != nil {
		return false, fmt.Errorf("%s: list injection webhooks of revision %s: %w", c.Name, rev, err)
	}
	for _, cfg := range list.Items {
		if len(cfg.Webhooks) > 0 && !slices.ContainsFunc(cfg.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return len(w.ClientConfig.CABundle) == 0 }) {
			return true, nil
		}
	}
	return false, nil
}

// injectionState is what WaitForInjection sees of a gateway's current pods.
type injectionState struct {
	// settled: the Deployment controller has rolled out the current
	// template, so its newest ReplicaSet is the one whose pods count.
	settled bool
	// pods of the newest ReplicaSet, not terminating; uninjected among them.
	pods, uninjected []string
}

func (s injectionState) done() bool { return s.settled && len(s.uninjected) == 0 }

// readInjection reads the gateway Deployment's newest ReplicaSet and its
// pods. Pods of older ReplicaSets are left out: a rollout replaces them,
// and it may wait for the new pods to be ready, which takes the data plane
// (not the injector) and is none of this wait's business.
func readInjection(ctx context.Context, c *kube.Cluster, g *Gateway) (injectionState, error) {
	ref := fmt.Sprintf("deployment %s/%s", g.Namespace, g.Name)
	dep, err := c.Kube.AppsV1().Deployments(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return injectionState{}, nil
	}
	if err != nil {
		return injectionState{}, fmt.Errorf("%s: read %s: %w", c.Name, ref, err)
	}
	if dep.Status.ObservedGeneration < dep.Generation {
		return injectionState{}, nil
	}
	sel := labels.SelectorFromSet(g.SelectorLabels()).String()
	rsList, err := c.Kube.AppsV1().ReplicaSets(g.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return injectionState{}, fmt.Errorf("%s: list replica sets of %s: %w", c.Name, ref, err)
	}
	var newest *appsv1.ReplicaSet
	rank := int64(-1)
	for i := range rsList.Items {
		rs := &rsList.Items[i]
		if !ownedBy(rs.OwnerReferences, dep.UID) {
			continue
		}
		n, _ := strconv.ParseInt(rs.Annotations["deployment.kubernetes.io/revision"], 10, 64)
		if n > rank {
			newest, rank = rs, n
		}
	}
	if newest == nil {
		return injectionState{}, nil
	}
	if dep.Spec.Replicas != nil && *dep.Spec.Replicas == 0 {
		return injectionState{settled: true}, nil // scaled to zero: no pod to inject
	}
	var st injectionState
	pods, err := c.Kube.CoreV1().Pods(g.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return injectionState{}, fmt.Errorf("%s: list pods of %s: %w", c.Name, ref, err)
	}
	for _, p := range pods.Items {
		if !ownedBy(p.OwnerReferences, newest.UID) || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		st.pods = append(st.pods, p.Name)
		if p.Annotations[SidecarStatusAnnotation] == "" {
			st.uninjected = append(st.uninjected, p.Name)
		}
	}
	// None yet: the ReplicaSet controller has not made them.
	st.settled = len(st.pods) > 0
	return st, nil
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	return slices.ContainsFunc(refs, func(r metav1.OwnerReference) bool { return r.UID == uid })
}

// RestartDeployment replaces the gateway's pods as `kubectl rollout
// restart` does: it sets RestartedAtAnnotation on the pod template, as c's
// field manager. The patch is an update, not an apply, so the manager's
// next apply of the Deployment (which does not list the annotation) keeps
// it instead of rolling the pods again.
func RestartDeployment(ctx context.Context, c *kube.Cluster, namespace, name string, at time.Time) error {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{RestartedAtAnnotation: at.UTC().Format(time.RFC3339)}},
	}}})
	if err != nil {
		return err
	}
	_, err = c.Kube.AppsV1().Deployments(namespace).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: c.Manager()})
	if err != nil {
		return fmt.Errorf("%s: restart deployment %s/%s: %w", c.Name, namespace, name, err)
	}
	return nil
}

// WaitForInjection waits up to timeout for the pods of gateway g's
// Deployment to be injected by the revision that serves them (they carry
// SidecarStatusAnnotation). A pod admitted before the revision's webhook
// was in place (flotilla writes the gateway before the control plane, so
// that its address is known to the Istio resources that need it) is never
// injected: once the webhook is there (InjectionWebhookReady), the
// Deployment is restarted, once, and the wait goes on for the new pods.
// Pods already injected make no write at all. It returns whether it
// restarted. progress, if not nil, receives a line when the wait starts,
// on the restart, every ten seconds while it lasts and when it ends. On
// timeout the error names the cluster, the Deployment and the revision:
//
//	east: deployment istio-system/istio-eastwestgateway: pod istio-eastwestgateway-5d9f-x2x4k not injected within 2m: the injection webhook of revision default never appeared (a MutatingWebhookConfiguration labelled istio.io/rev=default with a caBundle; is that revision's istiod running?)
//
// c must write as kube.ManagerGateways (the restart is a gateway write).
func WaitForInjection(ctx context.Context, c *kube.Cluster, g *Gateway, timeout time.Duration, progress func(string)) (restarted bool, err error) {
	rev := g.InjectionRevision()
	ref := fmt.Sprintf("deployment %s/%s", g.Namespace, g.Name)
	say := func(format string, args ...any) {
		if progress != nil {
			progress(fmt.Sprintf("%s: %s: ", c.Name, ref) + fmt.Sprintf(format, args...))
		}
	}
	start := time.Now()
	deadline := start.Add(timeout)
	lastSaid := start
	// Always the same two lines for a wait that ends well (as
	// WaitForAddress), however long it took: callers count them.
	say("waiting for pods injected by revision %s (up to %s)", rev, shortDuration(timeout))
	var st injectionState
	webhook := false
	for {
		readCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err = readInjection(readCtx, c, g)
		if err == nil && !st.done() && !webhook {
			webhook, err = InjectionWebhookReady(readCtx, c, rev)
		}
		cancel()
		if ctx.Err() != nil {
			return restarted, fmt.Errorf("%s: %s: waiting for pods injected by revision %s: %w", c.Name, ref, rev, ctx.Err())
		}
		if err != nil {
			return restarted, err
		}
		if st.done() {
			say("pods injected by revision %s", rev)
			return restarted, nil
		}
		if st.settled && webhook && !restarted {
			// Pods the webhook missed stay as they are: only new pods go
			// through it.
			say("pods %v were created before revision %s's injection webhook: restarting the deployment", st.uninjected, rev)
			if err := RestartDeployment(ctx, c, g.Namespace, g.Name, time.Now()); err != nil {
				return restarted, err
			}
			restarted = true
			continue
		}
		now := time.Now()
		if !now.Before(deadline) {
			return restarted, injectionTimeout(c, ref, rev, timeout, st, webhook, restarted)
		}
		if now.Sub(lastSaid) >= 10*time.Second {
			lastSaid = now
			say("still waiting after %s: %d of %d pods not injected, webhook of revision %s %s",
				shortDuration(now.Sub(start).Round(time.Second)), len(st.uninjected), len(st.pods), rev, map[bool]string{true: "ready", false: "missing"}[webhook])
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(PollInterval, deadline.Sub(now))):
		}
	}
}

// injectionTimeout says why the wait ended without injected pods.
func injectionTimeout(c *kube.Cluster, ref, rev string, timeout time.Duration, st injectionState, webhook, restarted bool) error {
	what := "no pod"
	if len(st.uninjected) > 0 {
		what = fmt.Sprintf("pods %v", st.uninjected)
		if len(st.uninjected) == 1 {
			what = "pod " + st.uninjected[0]
		}
	}
	switch {
	case !st.settled:
		return fmt.Errorf("%s: %s: no pod of the current template within %s (is the deployment controller running, and may it create the pods?)", c.Name, ref, shortDuration(timeout))
	case !webhook:
		return fmt.Errorf("%s: %s: %s not injected within %s: the injection webhook of revision %s never appeared (a MutatingWebhookConfiguration labelled %s=%s with a caBundle; is that revision's istiod running?)",
			c.Name, ref, what, shortDuration(timeout), rev, RevisionLabel, rev)
	case restarted:
		return fmt.Errorf("%s: %s: %s created after the restart not injected by revision %s within %s (does the webhook select the gateway's pods, and does istiod answer it?)",
			c.Name, ref, what, rev, shortDuration(timeout))
	}
	return fmt.Errorf("%s: %s: %s not injected by revision %s within %s", c.Name, ref, what, rev, shortDuration(timeout))
}
