package gateways

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// TestLabWaitForInjection: the restart decision of WaitForInjection against
// a real API server and Deployment controller. Each case's gateway names a
// revision that has no Sail Istio resource, so the lab's stand-in injector
// leaves its pods alone and the test plays the webhook itself (inject says
// which pods it injects). A second wait after a success must write nothing.
func TestLabWaitForInjection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := connect(t)
	tests := []struct {
		name string
		rev  string
		// webhook: the revision's webhook configuration exists, with a
		// caBundle when caBundle is set.
		webhook, caBundle bool
		inject            func(p *corev1.Pod) bool
		timeout           time.Duration
		wantRestart       bool
		wantErr           []string
	}{
		{
			name: "injected pods: nothing to do", rev: "inj-done",
			inject:  func(*corev1.Pod) bool { return true },
			timeout: time.Minute,
		},
		{
			name: "uninjected pods and the webhook in place: one restart", rev: "inj-restart", webhook: true, caBundle: true,
			// As the real webhook: only pods created once it is there,
			// the restart's.
			inject:      func(p *corev1.Pod) bool { return p.Annotations[RestartedAtAnnotation] != "" },
			timeout:     time.Minute,
			wantRestart: true,
		},
		{
			name: "uninjected pods, no webhook: the timeout names cluster, deployment and revision", rev: "inj-none",
			inject:  func(*corev1.Pod) bool { return false },
			timeout: 3 * time.Second,
			wantErr: []string{"east: deployment inj-none/istio-eastwestgateway: pod istio-eastwestgateway-", "not injected within 3s: the injection webhook of revision inj-none never appeared"},
		},
		{
			name: "a webhook without caBundle is not in place yet: no restart", rev: "inj-nocab", webhook: true,
			inject:  func(*corev1.Pod) bool { return false },
			timeout: 3 * time.Second,
			wantErr: []string{"east: deployment inj-nocab/istio-eastwestgateway:", "the injection webhook of revision inj-nocab never appeared"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := EastWest(tc.rev, "", Exposure{Type: corev1.ServiceTypeClusterIP})
			g.Revision = tc.rev
			t.Cleanup(func() {
				_ = c.Kube.CoreV1().Namespaces().Delete(context.Background(), tc.rev, metav1.DeleteOptions{})
				_ = c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), "istio-sidecar-injector-"+tc.rev, metav1.DeleteOptions{})
			})
			applyGateway(ctx, t, c, g)
			// The pods exist, uninjected, before any webhook does.
			waitPods(ctx, t, c.Kube, tc.rev)
			if tc.webhook {
				createWebhook(ctx, t, c.Kube, tc.rev, tc.caBundle)
			}
			injCtx, stop := context.WithCancel(ctx)
			defer stop()
			go playInjector(injCtx, c.Kube, tc.rev, tc.inject)

			var lines []string
			restarted, err := WaitForInjection(ctx, c.As(kube.ManagerGateways), &g, tc.timeout, func(l string) { lines = append(lines, l) })
			t.Logf("progress: %s", strings.Join(lines, "\n"))
			if restarted != tc.wantRestart {
				t.Errorf("restarted %v, want %v", restarted, tc.wantRestart)
			}
			dep, derr := c.Kube.AppsV1().Deployments(tc.rev).Get(ctx, g.Name, metav1.GetOptions{})
			if derr != nil {
				t.Fatal(derr)
			}
			if _, ok := dep.Spec.Template.Annotations[RestartedAtAnnotation]; ok != tc.wantRestart {
				t.Errorf("pod template annotation %s present %v, want %v", RestartedAtAnnotation, ok, tc.wantRestart)
			}
			if len(tc.wantErr) > 0 {
				for _, want := range tc.wantErr {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("error %v, want it to contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gen := dep.Generation
			again, err := WaitForInjection(ctx, c.As(kube.ManagerGateways), &g, tc.timeout, nil)
			if err != nil || again {
				t.Errorf("second wait: restarted %v, error %v; want neither", again, err)
			}
			dep, _ = c.Kube.AppsV1().Deployments(tc.rev).Get(ctx, g.Name, metav1.GetOptions{})
			if dep.Generation != gen {
				t.Errorf("second wait moved the deployment from generation %d to %d", gen, dep.Generation)
			}
		})
	}
}

// waitPods waits for the namespace's first pod.
func waitPods(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	for ctx.Err() == nil {
		if l, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil && len(l.Items) > 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no pod in namespace %s", ns)
}

// createWebhook writes revision rev's injection webhook configuration as
// Istio's chart labels it; the API server never calls it (its object
// selector matches no pod).
func createWebhook(ctx context.Context, t *testing.T, cs kubernetes.Interface, rev string, caBundle bool) {
	t.Helper()
	none, ignore := admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.Ignore
	url := "https://127.0.0.1:9/inject"
	w := admissionregistrationv1.MutatingWebhook{
		Name:                    "rev.object.sidecar-injector.istio.io",
		ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
		ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{"lab.flotilla.dev/never": "true"}},
		SideEffects:             &none,
		FailurePolicy:           &ignore,
		AdmissionReviewVersions: []string{"v1"},
	}
	if caBundle {
		w.ClientConfig.CABundle = []byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n")
	}
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-" + rev, Labels: map[string]string{RevisionLabel: rev}},
		Webhooks:   []admissionregistrationv1.MutatingWebhook{w},
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// playInjector marks the namespace's pods that inject selects as injected,
// until ctx ends.
func playInjector(ctx context.Context, cs kubernetes.Interface, ns string, inject func(*corev1.Pod) bool) {
	patch := []byte(`{"metadata":{"annotations":{"sidecar.istio.io/status":"{\"containers\":[\"istio-proxy\"]}"}}}`)
	for ctx.Err() == nil {
		if l, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, p := range l.Items {
				if p.Annotations[SidecarStatusAnnotation] == "" && inject(&p) {
					_, _ = cs.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}
