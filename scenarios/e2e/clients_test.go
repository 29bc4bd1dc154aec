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
	s := start(t, false, "east", "west")
	s.apply("multi-primary", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2}")
	r, code := s.verify(requests, "--keep")
	wantAll(t, r, code, "east", "west")

	ctx := context.Background()
	east := s.lab.Cluster("east").Client()
	if _, err := east.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "curl", Namespace: "plain", Labels: map[string]string{"app": "curl"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "curl", Image: "curlimages/curl", Command: []string{"/bin/sleep", "infinity"}}}},
	}
	if _, err := east.CoreV1().Pods("plain").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
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
