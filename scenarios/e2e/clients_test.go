package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// TestClientsTellApart: two curl pods in one cluster, one with a sidecar
// (namespace sample, injection on) and one without (namespace plain). kwok
// runs what is exec'd in either as a local process; each pod's own kwok
// Exec, written by the emulator, gives those processes the pod's own
// capture address, so each call is made as its pod would make it: the
// injected client reaches both versions through the mesh, the plain one only
// east's own endpoint, through kube-proxy. verify still passes with both.
func TestClientsTellApart(t *testing.T) {
	s := startShared(t)
	s.apply("multi-primary", multiNetwork...)
	r, code := s.verify(requests, "--keep")
	t.Cleanup(s.removeSample)
	wantAll(t, r, code, "east", "west")

	ctx := context.Background()
	east := s.lab.Cluster("east").Client()
	if _, err := east.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := east.CoreV1().Namespaces().Delete(context.Background(), "plain", metav1.DeleteOptions{}); err != nil {
			t.Errorf("east: delete namespace plain: %v", err)
		}
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "curl", Namespace: "plain", Labels: map[string]string{"app": "curl"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "curl", Image: "curlimages/curl", Command: []string{"/bin/sleep", "infinity"}}}},
	}
	// The namespace has no injection label: istiod's webhook leaves the
	// pod as it was sent, without a sidecar.
	var created *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		created, err = east.CoreV1().Pods("plain").Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, nil // the namespace's service account comes from the controller manager
	})
	if err != nil {
		t.Fatalf("east: create pod plain/curl: %v", err)
	}
	if len(created.Spec.InitContainers) > 0 || len(created.Spec.Containers) != 1 || created.Annotations["sidecar.istio.io/status"] != "" {
		t.Fatalf("east: pod plain/curl was injected in a namespace without the injection label: %+v", created.Spec)
	}
	kc, err := s.lab.Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	// Running, and kwok has the pod's own Exec (else it would use the node's).
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := east.CoreV1().Pods("plain").Get(ctx, "curl", metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		_, err = kc.Dynamic.Resource(lab.KwokExecGVR).Namespace("plain").Get(ctx, "curl", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("east: pod plain/curl running with its kwok Exec: %v", err)
	}

	answer := regexp.MustCompile(`Hello version: (\S+),`)
	for _, tc := range []struct {
		name, namespace, pod string
		want                 map[string]bool // version: must answer (true) or must not (false)
	}{
		{"sidecar", "sample", r.pod("east"), map[string]bool{"v1": true, "v2": true}},
		{"no sidecar", "plain", "curl", map[string]bool{"v1": true, "v2": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]int{}
			for range requests {
				out, err := exec.Command(s.lab.Bin("kubectl"), "--kubeconfig", s.lab.Kubeconfig, "--context", "east",
					"-n", tc.namespace, "exec", tc.pod, "-c", "curl", "--", "curl", "-s", "helloworld.sample:5000/hello").CombinedOutput()
				m := answer.FindSubmatch(out)
				if err != nil || m == nil {
					t.Fatalf("east: exec in %s/%s: %v: %s", tc.namespace, tc.pod, err, out)
				}
				got[string(m[1])]++
			}
			for v, must := range tc.want {
				if must != (got[v] > 0) {
					t.Errorf("east: client %s/%s answers %v: %s must answer: %v", tc.namespace, tc.pod, got, v, must)
				}
			}
		})
	}

	r, code = s.verify(requests)
	wantAll(t, r, code, "east", "west")
}
