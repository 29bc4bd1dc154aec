package realistio

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
)

// TestCACertsAfterIstiod is the negative control of the order flotilla
// keeps (cacerts before istiod): an istiod that starts without cacerts
// makes itself a CA (istio-ca-secret) and keeps it when cacerts appears,
// so its workloads trust another root. flotilla check finds it through
// istiod's own publication and names the way out; once istiod restarts
// with cacerts in place, the check passes again.
func TestCACertsAfterIstiod(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	c := l.Cluster("east")
	kc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	before := waitIstiodReady(t, ctx, c)

	// istiod restarts while cacerts is gone: it starts as its own CA.
	if err := kc.Kube.CoreV1().Secrets("istio-system").Delete(ctx, pki.SecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted := restartIstiod(t, ctx, kc, c, before)
	waitSecret(t, ctx, kc, "istio-system", "istio-ca-secret")
	t.Logf("istiod %s restarted without cacerts and made istio-ca-secret", restarted.Pod)

	// cacerts comes back after istiod started: istiod does not take it up.
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	ck := waitCheck(t, ctx, h, "istiod uses the mesh CA", "east", false)
	for _, want := range []string{"self-signed CA", "istio-system/istio-ca-secret", "started before cacerts existed"} {
		if !strings.Contains(ck.Message, want) {
			t.Errorf("check message %q does not say %q", ck.Message, want)
		}
	}
	if !strings.Contains(ck.Hint, "delete pod "+restarted.Pod) {
		t.Errorf("check hint %q does not name the restart", ck.Hint)
	}

	// The way out the hint gives: drop istiod's own CA, restart it.
	if err := kc.Kube.CoreV1().Secrets("istio-system").Delete(ctx, "istio-ca-secret", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	restartIstiod(t, ctx, kc, c, restarted)
	ck = waitCheck(t, ctx, h, "istiod uses the mesh CA", "east", true)
	t.Logf("after the restart: %s", ck.Message)
	if _, err := kc.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("istio-ca-secret after a restart with cacerts: %v, want not found", err)
	}
}

// restartIstiod deletes istiod's pod and waits for its replacement to be ready.
func restartIstiod(t *testing.T, ctx context.Context, kc *kube.Cluster, c *lab.Cluster, old lab.IstiodInfo) lab.IstiodInfo {
	t.Helper()
	if err := kc.Kube.CoreV1().Pods(old.Namespace).Delete(ctx, old.Pod, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var got []lab.IstiodInfo
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		got = c.Istiods()
		return len(got) == 1 && got[0].Pod != old.Pod && !got[0].Ready.IsZero(), nil
	})
	if err != nil {
		t.Fatalf("no new ready istiod after deleting %s: %+v", old.Pod, got)
	}
	return got[0]
}

func waitSecret(t *testing.T, ctx context.Context, kc *kube.Cluster, ns, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := kc.Kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: no secret %s/%s: %v", kc.Name, ns, name, err)
	}
}

// waitCheck runs flotilla check until the named check of cluster has the
// wanted verdict (istiod publishes its root within moments of starting).
func waitCheck(t *testing.T, ctx context.Context, h *server.Hub, name, cluster string, ok bool) server.Check {
	t.Helper()
	var last server.Check
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		checks, err := h.Check(ctx, nil)
		if err != nil {
			return false, nil
		}
		for _, c := range checks {
			if c.Name == name && c.Cluster == cluster {
				last = c
				return c.OK == ok, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("check %s [%s]: last %+v, want ok %v", name, cluster, last, ok)
	}
	return last
}
