package approval

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
// agent's Approved condition.
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
	cfg := l.Cluster("east").RESTConfig()
	cfg.BearerToken = token(t, ctx, admin, agentNS, csragent.ServiceName)
	agentKC, err := kube.Connect("east", cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := csragent.New(csragent.Options{Cluster: agentKC, Namespace: agentNS, TrustBundle: trust, SignTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// Watch the agent's requests as they come and go (it deletes each
	// once answered), to see who approved them.
	reasons := make(chan string, 8)
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	go func() {
		w, err := admin.Dynamic.Resource(crGVR).Namespace(agentNS).Watch(wctx, metav1.ListOptions{})
		if err != nil {
			reasons <- "watch: " + err.Error()
			return
		}
		defer w.Stop()
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(interface{ UnstructuredContent() map[string]any })
			if !ok {
				continue
			}
			cr := decodeMap(u.UnstructuredContent())
			if cr.Spec.IssuerRef.Name != certmanager.WorkloadIssuerName {
				continue // the intermediate's, approved by the hub
			}
			if c := condition(cr, "Approved"); c != nil && len(cr.Status.Certificate) > 0 {
				reasons <- c.Reason
				return
			}
		}
	}()

	id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", appNS, appSA)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	csrPEM := csr(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}})
	ictx := metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token(t, ctx, admin, appNS, appSA, csragent.DefaultAudience)))
	resp, err := agent.CreateCertificate(ictx, &securityv1alpha1.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: 3600})
	if err != nil {
		t.Fatalf("east: csr-agent in %s: CreateCertificate for %s: %v", agentNS, id, err)
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
		if r != csragent.ApprovedReason {
			t.Errorf("east: the agent's request was approved with reason %q, want %q", r, csragent.ApprovedReason)
		}
	case <-ctx.Done():
		t.Fatal("east: never saw the agent's request approved and signed")
	}
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
