package csragent_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/pki/csragent"
)

// TestCSRAgentObjects: the manifests hold what the agent needs, in an
// order that applies cleanly, and refuse to render without an image or a
// trust bundle.
func TestCSRAgentObjects(t *testing.T) {
	objs, err := csragent.Objects(csragent.ManifestOptions{Cluster: "east", Image: "flotilla:test", TrustBundlePEM: []byte("pem"), RootCertNamespaces: []string{"apps-1"}})
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
		o    csragent.ManifestOptions
	}{
		{"no image", csragent.ManifestOptions{TrustBundlePEM: []byte("pem")}},
		{"no trust bundle", csragent.ManifestOptions{Image: "flotilla:test"}},
	} {
		if _, err := csragent.Objects(tc.o); err == nil {
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
