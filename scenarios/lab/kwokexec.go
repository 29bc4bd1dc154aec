package lab

import (
	_ "embed"
	"fmt"
	"net"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// kwokExecCRD is kwok's own Exec CustomResourceDefinition, copied unchanged
// from sigs.k8s.io/kwok@KwokVersion kustomize/crd/bases/kwok.x-k8s.io_execs.yaml
// (Apache-2.0; TestKwokExecCRDMatchesModule keeps it in step). The lab
// module does not depend on kwok, so it carries the file.
//
//go:embed kwok-execs-crd.yaml
var kwokExecCRD []byte

// KwokExecGVR is kwok's per-pod exec configuration. kwok (started with
// --enable-crds=Exec) takes an Exec named like a pod, in its namespace,
// before any ClusterExec: that is how one pod's exec'd processes get an
// environment of their own.
var KwokExecGVR = schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: "execs"}

func kwokCRDs() ([]crd, error) {
	j, err := yaml.YAMLToJSON(kwokExecCRD)
	if err != nil {
		return nil, fmt.Errorf("kwok Exec CRD: %w", err)
	}
	return []crd{{name: "execs.kwok.x-k8s.io", json: j}}, nil
}

// captureEnv is the environment kwok gives a process exec'd in a pod: its
// HTTP requests go to capture (host:port), where the data-plane emulator
// takes them as the pod's outbound capture would.
func captureEnv(capture, cluster string) []any {
	env := func(name, value string) any { return map[string]any{"name": name, "value": value} }
	return []any{
		env("http_proxy", "http://"+capture),
		env("no_proxy", ""),
		env("NO_PROXY", ""),
		env("FLOTILLA_LAB_CLUSTER", cluster),
	}
}

// PodCaptureAddress is where the requests of processes exec'd in a pod
// with address podIP go once the pod has its own Exec (PodExec): port
// ProxyCapturePort on the pod's loopback stand-in.
func PodCaptureAddress(podIP net.IP) (string, bool) {
	lb, ok := Loopback(podIP)
	if !ok {
		return "", false
	}
	return net.JoinHostPort(lb.String(), strconv.Itoa(ProxyCapturePort)), true
}

// PodExec is the kwok Exec that sends the requests of processes exec'd in
// pod (any container) to capture, its own capture address, instead of the
// node's: whoever listens there knows which pod is calling. owner makes the
// garbage collector delete it with the pod.
func PodExec(cluster string, pod metav1.Object, capture string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"execs": []any{map[string]any{"local": map[string]any{"envs": captureEnv(capture, cluster)}}},
		},
	}}
	u.SetAPIVersion("kwok.x-k8s.io/v1alpha1")
	u.SetKind("Exec")
	u.SetName(pod.GetName())
	u.SetNamespace(pod.GetNamespace())
	u.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.GetName(), UID: pod.GetUID()}})
	return u
}
