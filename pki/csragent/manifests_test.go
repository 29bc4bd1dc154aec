package csragent_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/pki/certmanager"
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
	// Approval is explicit: the agent may approve for its own signer only.
	clusterRole := fmt.Sprint(objs[1].Unstructured().Object["rules"])
	if !strings.Contains(clusterRole, "resourceNames:[issuers.cert-manager.io/istio-system.flotilla-workload]") || !strings.Contains(clusterRole, "resources:[signers] verbs:[approve]") {
		t.Errorf("csr-agent ClusterRole does not grant approve on its own signer alone: %v", clusterRole)
	}
	if !strings.Contains(fmt.Sprint(role.Object["rules"]), "certificaterequests/status") {
		t.Errorf("csr-agent Role cannot write its Approved condition: %v", role.Object["rules"])
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

func TestSignerName(t *testing.T) {
	for _, tc := range []struct {
		issuer certmanager.IssuerRef
		want   string
	}{
		{certmanager.WorkloadIssuer(), "issuers.cert-manager.io/istio-system.flotilla-workload"},
		{certmanager.IssuerRef{Name: "corp"}, "issuers.cert-manager.io/istio-system.corp"},
		{certmanager.IssuerRef{Name: "corp", Kind: "ClusterIssuer"}, "clusterissuers.cert-manager.io/corp"},
	} {
		if got := csragent.SignerName("istio-system", tc.issuer); got != tc.want {
			t.Errorf("SignerName(%v) = %q, want %q", tc.issuer, got, tc.want)
		}
	}
}
