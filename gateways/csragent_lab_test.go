package gateways

import (
	"context"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/pki/csragent"
)

// TestLabCSRAgentManifests runs here, not beside the agent, because it
// needs a cluster with cert-manager's CRDs but without its controllers
// (which write the Certificate's status): this package's lab has one, the
// agent's runs cert-manager. The API server (with cert-manager's CRDs)
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
	objs, err := csragent.Objects(csragent.ManifestOptions{Cluster: "north", Namespace: ns, Image: "flotilla:test", TrustBundlePEM: []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")})
	if err != nil {
		t.Fatal(err)
	}
	first, err := deploy.ApplyObjects(ctx, c, objs, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := deploy.ApplyObjects(ctx, c, objs, nil)
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
		if !o.UpToDate(live, c.Manager()) {
			t.Errorf("%s is not up to date after the apply: a re-apply would write it again", o.Ref())
		}
	}
	user := "system:serviceaccount:" + ns + ":" + csragent.ServiceName
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
