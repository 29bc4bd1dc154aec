package server

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestHelloAnswer(t *testing.T) {
	for _, tc := range []struct {
		out, version string
	}{
		{"Hello version: v1, instance: helloworld-v1-5d5dc9cc48-d8cjp\n", "v1"},
		{"Hello version: v2, instance: helloworld-v2-86cd96b6d-h8wcw", "v2"},
		{"no healthy upstream", ""},
		{"upstream connect error or disconnect/reset before headers", ""},
	} {
		m := helloAnswer.FindStringSubmatch(tc.out)
		got := ""
		if m != nil {
			got = m[1]
		}
		if got != tc.version {
			t.Errorf("%q: version %q, want %q", tc.out, got, tc.version)
		}
	}
}

func TestHelloImage(t *testing.T) {
	for _, tc := range []struct {
		version, image string
		env            bool
	}{
		{"v1", "docker.io/istio/examples-helloworld-v1:1.0", false},
		{"v2", "docker.io/istio/examples-helloworld-v2:1.0", false},
		{"v3", "docker.io/istio/examples-helloworld-v1:1.0", true},
	} {
		image, env := helloImage(tc.version)
		if image != tc.image || (len(env) > 0) != tc.env {
			t.Errorf("%s: image %s env %d, want %s env %v", tc.version, image, len(env), tc.image, tc.env)
		}
		if tc.env && *env[0].Value != tc.version {
			t.Errorf("%s: SERVICE_VERSION %s", tc.version, *env[0].Value)
		}
	}
}

func TestRolledOut(t *testing.T) {
	one := int32(1)
	for _, tc := range []struct {
		name string
		st   appsv1.DeploymentStatus
		gen  int64
		want bool
	}{
		{"available", appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}, 1, true},
		{"not observed", appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}, 2, false},
		{"not available", appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1}, 1, false},
		{"old replica left", appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 1}, 1, false},
	} {
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: tc.gen}, Spec: appsv1.DeploymentSpec{Replicas: &one}, Status: tc.st}
		if got := rolledOut(d); got != tc.want {
			t.Errorf("%s: rolledOut %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestReplicaFailure: a rollout that timed out says why its pods were not
// created (the ReplicaFailure condition), and nothing when they were.
func TestReplicaFailure(t *testing.T) {
	refused := "Internal error occurred: failed calling webhook \"namespace.sidecar-injector.istio.io\": connection refused"
	for _, tc := range []struct {
		name  string
		conds []appsv1.DeploymentCondition
		want  string
	}{
		{"no condition", nil, ""},
		{"pods refused", []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue}, {Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate", Message: refused}}, "pods not created (FailedCreate): " + refused},
		{"failure cleared", []appsv1.DeploymentCondition{{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionFalse, Reason: "FailedCreate", Message: refused}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &appsv1.Deployment{Status: appsv1.DeploymentStatus{Conditions: tc.conds}}
			if got := replicaFailure(d); got != tc.want {
				t.Errorf("replicaFailure: %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHasSidecar(t *testing.T) {
	for _, tc := range []struct {
		name string
		pod  corev1.Pod
		want bool
	}{
		{"container", corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}}}, true},
		{"native sidecar", corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "istio-proxy"}}}}, true},
		{"injector annotation", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"sidecar.istio.io/status": "{}"}}}, true},
		{"none", corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}, false},
	} {
		if got := hasSidecar(&tc.pod); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestJudge: verify passes only when every request of every client got an
// answer and every version answered every client.
func TestJudge(t *testing.T) {
	client := func(name string, requests, failures int, answers map[string]int, errs ...string) VerifyClient {
		return VerifyClient{Cluster: name, Requests: requests, Failures: failures, Answers: answers, Errors: errs}
	}
	for _, tc := range []struct {
		name    string
		clients []VerifyClient
		wantErr []string // substrings of the error; none: passes
		missing map[string][]string
	}{
		{"all answered", []VerifyClient{
			client("east", 4, 0, map[string]int{"v1": 2, "v2": 2}),
			client("west", 4, 0, map[string]int{"v1": 1, "v2": 3}),
		}, nil, nil},
		{"some requests failed though both versions answered", []VerifyClient{
			client("east", 10, 7, map[string]int{"v1": 2, "v2": 1}, "exec: exit status 7"),
			client("west", 10, 0, map[string]int{"v1": 5, "v2": 5}),
		}, []string{"7 of 20 requests failed", "east 7/10", "west 0/10", "first errors: east: exec: exit status 7"}, nil},
		{"a version missing, no request failed", []VerifyClient{
			client("east", 4, 0, map[string]int{"v1": 4}),
			client("west", 4, 0, map[string]int{"v1": 2, "v2": 2}),
		}, []string{"east misses v2"}, map[string][]string{"east": {"v2"}}},
		{"first errors capped", []VerifyClient{
			client("east", 4, 4, map[string]int{}, "a", "b", "c"),
			client("west", 4, 4, map[string]int{}, "d"),
		}, []string{"8 of 8 requests failed", "east: a; east: b; east: c", "east misses v1,v2", "west misses v1,v2"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &VerifyResult{Versions: []string{"v1", "v2"}, Clients: tc.clients}
			err := judge(r)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("judge: %v, want pass", err)
				}
				return
			}
			if err == nil {
				t.Fatal("judge passed, want failure")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "west: d") && len(tc.clients[0].Errors) >= maxVerifyErrors {
				t.Errorf("error %q lists more than %d first errors", err, maxVerifyErrors)
			}
			for _, c := range r.Clients {
				if want, ok := tc.missing[c.Cluster]; ok && !slices.Equal(c.Missing, want) {
					t.Errorf("client %s missing %v, want %v", c.Cluster, c.Missing, want)
				}
			}
		})
	}
}

// TestVerifyOptions: the query of POST /api/v1/verify becomes the options,
// and out-of-range values are refused naming the flag.
func TestVerifyOptions(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    VerifyOptions
		wantErr string
	}{
		{"", VerifyOptions{}, ""},
		{"requests=4&keep=true&timeout=90s", VerifyOptions{Requests: 4, Keep: true, Timeout: 90 * time.Second}, ""},
		{"requests=5000", VerifyOptions{}, "--requests 5000"},
		{"requests=-1", VerifyOptions{}, "--requests -1"},
		{"requests=many", VerifyOptions{}, "requests \"many\""},
		{"timeout=-1s", VerifyOptions{}, "--timeout -1s"},
		{"keep=perhaps", VerifyOptions{}, "keep \"perhaps\""},
		{"localService=true", VerifyOptions{LocalService: true}, ""},
		{"localService=maybe", VerifyOptions{}, "localService \"maybe\""},
	} {
		t.Run(tc.query, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/api/v1/verify?"+tc.query, nil)
			got, err := verifyOptions(r)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
}
