package approval

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/pki/issuer"
)

// TestCSRAgentApprovesItsOwn: with nothing approving by default, the
// csr-agent, connected as its own service account with the RBAC its
// manifests give it, approves the request it makes for a workload whose
// token and CSR its policy admitted, and cert-manager's CA issuer signs
// it: the workload gets its certificate, and the request carried the
// agent's Approved condition. An agent whose identity may not approve
// leaves the request to the cluster's approver (here the test) and the
// workload still gets its certificate.
func TestCSRAgentApprovesItsOwn(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := connect(t, l, "east")
	agentNS := fmt.Sprintf("istio-agent-%x", mrand.Uint32())
	const appNS, appSA = "apps-approval", "httpbin"
	for _, n := range []string{agentNS, appNS} {
		if _, err := admin.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = admin.Kube.CoreV1().Namespaces().Delete(context.Background(), agentNS, metav1.DeleteOptions{})
	})
	if _, err := admin.Kube.CoreV1().ServiceAccounts(appNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: appSA}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	// The workload issuer, on an intermediate the hub's issuer (approving
	// by policy) signs.
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certmanager.Apply(ctx, admin, certmanager.Config{Cluster: "east", Namespace: agentNS}); err != nil {
		t.Fatal(err)
	}
	hub := &issuer.Controller{Cluster: admin, Signer: issuer.Signer{Cluster: "east", Namespace: agentNS, Root: root}, Approve: true}
	hctx, hstop := context.WithCancel(ctx)
	defer hstop()
	go hub.Run(hctx)
	if _, err := certmanager.WaitReady(ctx, admin, agentNS, nil); err != nil {
		t.Fatal(err)
	}

	// The agent's own identity, with the RBAC of its manifests.
	trust := pki.NewBundle(root.Cert)
	objs, err := csragent.Objects(csragent.ManifestOptions{Cluster: "east", Namespace: agentNS, Image: "flotilla:test", TrustBundlePEM: trust.PEM()})
	if err != nil {
		t.Fatal(err)
	}
	objs = slices.DeleteFunc(objs, func(o kube.Object) bool {
		return !slices.Contains([]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}, o.Unstructured().GetKind())
	})
	if _, err := deploy.ApplyObjects(ctx, admin, objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		name := csragent.ServiceName + "-" + agentNS
		_ = admin.Kube.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = admin.Kube.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	// Identities like the agent's that may not approve: one without the
	// right to write the request's status (RBAC refuses), one that may
	// write it but lacks `approve` on the signer (cert-manager's webhook
	// refuses, as for an agent configured for an issuer its ClusterRole
	// does not name).
	const restricted, noSigner = "agent-no-approval", "agent-no-signer"
	restrictedRBAC(t, ctx, admin, agentNS, restricted, false)
	restrictedRBAC(t, ctx, admin, agentNS, noSigner, true)

	id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", appNS, appSA)
	for _, tc := range []struct {
		name, sa string
		// approvedBy is the Approved reason expected: the agent's own, or
		// "test" where the test stands in for the cluster's approver.
		approvedBy string
		// refusedBy is in the agent's log line when it may not approve.
		refusedBy string
	}{
		{"its own identity approves", csragent.ServiceName, csragent.ApprovedReason, ""},
		{"an identity that may not write the status waits for the cluster's approver", restricted, "test", "cannot patch resource"},
		{"an identity without approve on the signer waits for the cluster's approver", noSigner, "test", "does not have permissions to set approved/denied conditions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := l.Cluster("east").RESTConfig()
			cfg.BearerToken = token(t, ctx, admin, agentNS, tc.sa)
			agentKC, err := kube.Connect("east", cfg)
			if err != nil {
				t.Fatal(err)
			}
			logs := &logBuffer{}
			agent, err := csragent.New(csragent.Options{Cluster: agentKC, Namespace: agentNS, TrustBundle: trust, SignTimeout: time.Minute, Log: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			actx, astop := context.WithCancel(ctx)
			defer astop()
			if err := agent.Start(actx); err != nil {
				t.Fatal(err)
			}
			// The cluster's approver, where the agent may not approve, acts
			// once the agent has tried: else the agent's attempt would meet
			// a decision already made, not the refusal.
			var approveAfter func(name string) bool
			if tc.approvedBy == "test" {
				approveAfter = func(name string) bool { return logs.count("may not approve", "name="+name) > 0 }
			}
			reasons := watchWorkloadRequests(t, actx, admin, agentNS, approveAfter)

			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			u, _ := url.Parse(id)
			csrPEM := csr(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}})
			ictx := metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token(t, ctx, admin, appNS, appSA, csragent.DefaultAudience)))
			resp, err := agent.CreateCertificate(ictx, &securityv1alpha1.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: 3600})
			if err != nil {
				t.Fatalf("east: csr-agent as %s/%s: CreateCertificate for %s: %v", agentNS, tc.sa, id, err)
			}
			b, _ := pem.Decode([]byte(resp.CertChain[0]))
			leaf, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
				t.Errorf("east: issued certificate names %v, want %s", leaf.URIs, id)
			}
			select {
			case r := <-reasons:
				if r != tc.approvedBy {
					t.Errorf("east: the request of %s was approved with reason %q, want %q", tc.sa, r, tc.approvedBy)
				}
			case <-ctx.Done():
				t.Fatal("east: never saw the agent's request approved and signed")
			}
			// It said why it left approval to the cluster, naming the permission.
			signer := "approve on signers.cert-manager.io " + csragent.SignerName(agentNS, certmanager.WorkloadIssuer())
			if tc.refusedBy != "" && logs.count("may not approve", signer, tc.refusedBy) == 0 {
				t.Errorf("east: csr-agent as %s/%s: no log line naming %q and %q; its log:\n%s", agentNS, tc.sa, signer, tc.refusedBy, logs.String())
			}
		})
	}
}

// watchWorkloadRequests reports the Approved reason of the first workload
// request seen signed in ns (the agent deletes each once answered, hence
// a watch). approveAfter, when not nil: the watcher stands in for the
// cluster's approver and approves each unapproved workload request it
// sees, once approveAfter(its name) holds.
func watchWorkloadRequests(t *testing.T, ctx context.Context, admin *kube.Cluster, ns string, approveAfter func(name string) bool) <-chan string {
	reasons := make(chan string, 1)
	w, err := admin.Dynamic.Resource(crGVR).Namespace(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("%s: watch CertificateRequests in %s: %v", admin.Name, ns, err)
	}
	go func() {
		defer w.Stop()
		approving := map[string]bool{}
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(interface{ UnstructuredContent() map[string]any })
			if !ok {
				continue
			}
			cr := decodeMap(u.UnstructuredContent())
			if cr.Spec.IssuerRef.Name != certmanager.WorkloadIssuerName {
				continue // the intermediate's, approved by the hub
			}
			c := condition(cr, "Approved")
			switch {
			case c != nil && len(cr.Status.Certificate) > 0:
				reasons <- c.Reason
				return
			case c == nil && approveAfter != nil && cr.Name != "" && !approving[cr.Name]:
				approving[cr.Name] = true
				go func(name string) {
					for !approveAfter(name) && ctx.Err() == nil {
						time.Sleep(50 * time.Millisecond)
					}
					obj := &unstructured.Unstructured{Object: map[string]any{
						"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
						"metadata": map[string]any{"name": name, "namespace": ns},
						"status": map[string]any{"conditions": []any{map[string]any{
							"type": "Approved", "status": "True", "reason": "test", "message": "approved by the test",
							"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
						}}},
					}}
					// An error shows as the request never signed.
					_, _ = admin.Dynamic.Resource(crGVR).Namespace(ns).ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: "approval-test"})
				}(cr.Name)
			}
		}
	}()
	return reasons
}

// restrictedRBAC gives ns/sa the agent's rights but `approve` on its
// signer: its requests (and their status, when writeStatus), TokenReviews,
// and the namespaces and ConfigMaps it reads.
func restrictedRBAC(t *testing.T, ctx context.Context, admin *kube.Cluster, ns, sa string, writeStatus bool) {
	t.Helper()
	rbac := admin.Kube.RbacV1()
	rules := []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"},
		Verbs: []string{"create", "patch", "get", "list", "watch", "delete"},
	}}
	if writeStatus {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests/status"}, Verbs: []string{"patch"}})
	}
	_, err := admin.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err == nil {
		_, err = rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: sa}, Rules: rules}, metav1.CreateOptions{})
	}
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}
	if err == nil {
		_, err = rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: sa}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: sa}}, metav1.CreateOptions{})
	}
	reviews := sa + "-" + ns
	if err == nil {
		_, err = rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: reviews}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
		}}, metav1.CreateOptions{})
	}
	if err == nil {
		_, err = rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: reviews}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: reviews}}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("%s: RBAC of %s/%s: %v", admin.Name, ns, sa, err)
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(context.Background(), reviews, metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(context.Background(), reviews, metav1.DeleteOptions{})
	})
}

// token is a TokenRequest token of ns/sa.
func token(t *testing.T, ctx context.Context, c *kube.Cluster, ns, sa string, audiences ...string) string {
	t.Helper()
	exp := int64(600)
	tr, err := c.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("%s: token of %s/%s: %v", c.Name, ns, sa, err)
	}
	return tr.Status.Token
}
