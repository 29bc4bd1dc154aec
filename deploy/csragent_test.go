package deploy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

// TestCSRAgentObjects: the manifests hold what the agent needs, in an
// order that applies cleanly, and refuse to render without an image or a
// trust bundle.
func TestCSRAgentObjects(t *testing.T) {
	objs, err := CSRAgentObjects(CSRAgentOptions{Cluster: "east", Image: "flotilla:test", TrustBundlePEM: []byte("pem"), RootCertNamespaces: []string{"apps-1"}})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Unstructured().GetKind())
	}
	want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Certificate", "Certificate", "Service", "Deployment"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	dep := objs[len(objs)-1].Unstructured()
	args := containerArgs(dep.Object)
	joined := strings.Join(args, " ")
	for _, f := range []string{"csr-agent", "--namespace=istio-system", "--issuer-name=flotilla-workload", "--trust-bundle-file=", "--tls-cert-file=", "--root-cert-namespaces=apps-1"} {
		if !strings.Contains(joined, f) {
			t.Errorf("deployment args %q lack %s", joined, f)
		}
	}
	if strings.Contains(joined, "--istiod-cert") {
		t.Errorf("deployment args %q: the agent keeps istiod's Certificate, which its Role no longer allows", joined)
	}
	role := objs[3].Unstructured()
	if strings.Contains(fmt.Sprint(role.Object["rules"]), "certificates ") || strings.Contains(fmt.Sprint(role.Object["rules"]), "certificates]") {
		t.Errorf("csr-agent Role grants certificates: %v", role.Object["rules"])
	}
	for _, tc := range []struct {
		name string
		o    CSRAgentOptions
	}{
		{"no image", CSRAgentOptions{TrustBundlePEM: []byte("pem")}},
		{"no trust bundle", CSRAgentOptions{Image: "flotilla:test"}},
	} {
		if _, err := CSRAgentObjects(tc.o); err == nil {
			t.Errorf("%s: rendered", tc.name)
		}
	}
}

// containerArgs reads the first container's args of a Deployment.
func containerArgs(obj map[string]any) []string {
	spec := obj["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	var out []string
	for _, a := range spec["containers"].([]any)[0].(map[string]any)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

// TestLabCSRAgentManifests: the API server (with cert-manager's CRDs)
// accepts the manifests, a second apply changes nothing, and the agent's
// service account may do exactly what the agent does.
func TestLabCSRAgentManifests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := testLab.Get(t)
	c, err := l.Cluster("north").Connect()
	if err != nil {
		t.Fatal(err)
	}
	const ns = "csr-agent-test"
	if _, err := c.Kube.CoreV1().Namespaces().Apply(ctx, corev1ac.Namespace(ns), c.ApplyOptions()); err != nil {
		t.Fatal(err)
	}
	objs, err := CSRAgentObjects(CSRAgentOptions{Cluster: "north", Namespace: ns, Image: "flotilla:test", TrustBundlePEM: []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ApplyObjects(ctx, c, objs, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := ApplyObjects(ctx, c, objs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range first {
		if first[i].ResourceVersion != second[i].ResourceVersion && !strings.HasPrefix(first[i].Ref, "Deployment") {
			// The deployment controller writes status; everything else is ours alone.
			t.Errorf("second apply changed %s", first[i].Ref)
		}
	}
	for _, o := range objs {
		live, err := o.Get(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if !o.UpToDate(live) {
			t.Errorf("%s is not up to date after the apply: a re-apply would write it again", o.Ref())
		}
	}
	user := "system:serviceaccount:" + ns + ":" + CSRAgentName
	for _, tc := range []struct {
		name  string
		attrs authzv1.ResourceAttributes
		want  bool
	}{
		{"review tokens", authzv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}, true},
		{"create certificate requests by apply", authzv1.ResourceAttributes{Group: "cert-manager.io", Resource: "certificaterequests", Verb: "patch", Namespace: ns}, true},
		{"delete certificate requests", authzv1.ResourceAttributes{Group: "cert-manager.io", Resource: "certificaterequests", Verb: "delete", Namespace: ns}, true},
		{"write istio-ca-root-cert anywhere", authzv1.ResourceAttributes{Resource: "configmaps", Verb: "patch", Namespace: "apps-1"}, true},
		{"no certificate requests elsewhere", authzv1.ResourceAttributes{Group: "cert-manager.io", Resource: "certificaterequests", Verb: "create", Namespace: "default"}, false},
		{"no secrets", authzv1.ResourceAttributes{Resource: "secrets", Verb: "get", Namespace: ns}, false},
		{"no certificates", authzv1.ResourceAttributes{Group: "cert-manager.io", Resource: "certificates", Verb: "patch", Namespace: ns}, false},
		{"no approval", authzv1.ResourceAttributes{Group: "cert-manager.io", Resource: "signers", Verb: "approve"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			attrs := tc.attrs
			sar, err := c.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns}, ResourceAttributes: &attrs,
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != tc.want {
				t.Errorf("allowed %v, want %v (%s)", sar.Status.Allowed, tc.want, sar.Status.Reason)
			}
		})
	}
}
