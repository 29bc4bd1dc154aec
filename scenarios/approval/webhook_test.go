package approval

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// The lab runs cert-manager's webhook: setting Approved or Denied needs
// `approve` on the request's signer, checked by the webhook through a
// SubjectAccessReview, whatever the identity's RBAC on the status.

var meshIssuerRef = cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: certmanager.MeshIssuerName}

// TestHubApprovalNeedsApprove: the hub connected as an identity that may
// write a request's status but not `approve` its signer has its approval
// refused by cert-manager's webhook; it leaves the request alone (no
// retries while nothing changes), says on the request which permission
// it lacks, and signs once a permitted approver (the test, as the
// cluster's) approves. Granted `approve`, the same identity's approval is
// admitted and the intermediate issues.
func TestHubApprovalNeedsApprove(t *testing.T) {
	l := testLab.Get(t)
	for _, tc := range []struct {
		name       string
		mayApprove bool
		approvedBy string
	}{
		{"without approve on the signer the cluster's approver decides", false, "test"},
		{"with approve on the signer the hub approves", true, issuer.ApprovedReason},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			admin := connect(t, l, "east")
			cpNS, hub := hubNamespace(t, ctx, admin)
			signer := signerName(cpNS)
			hubKC := identity(t, ctx, l, admin, cpNS, "flotilla-hub", statusWriter(signer, tc.mayApprove))
			logs := &logBuffer{}
			hub.Cluster, hub.Log = hubKC, slog.New(slog.NewTextHandler(logs, nil))
			hctx, hstop := context.WithCancel(ctx)
			defer hstop()
			go hub.Run(hctx)

			name := createIn(t, ctx, admin, cpNS, "needs-approve", intermediateCSR(t, cpNS), true, meshIssuerRef)
			if !tc.mayApprove {
				got := waitForIn(t, ctx, admin, cpNS, name, func(cr *cmapi.CertificateRequest) bool {
					c := condition(cr, cmapi.CertificateRequestConditionReady)
					return c != nil && strings.Contains(c.Message, "may not approve")
				})
				if got.Spec.Username == "" {
					t.Errorf("east: CertificateRequest %s/%s has no spec.username: cert-manager's mutating webhook did not see it", cpNS, name)
				}
				if c := condition(got, cmapi.CertificateRequestConditionReady); !strings.Contains(c.Message, signer) || c.Reason != cmapi.CertificateRequestReasonPending {
					t.Errorf("east: CertificateRequest %s/%s: Ready %s %q, want Pending naming signer %s", cpNS, name, c.Reason, c.Message, signer)
				}
				// Left alone: no approval retried while the request does not
				// change (its creation and the hub's own Pending write are
				// the changes; retrying with the watch's backoff made 4).
				time.Sleep(8 * time.Second)
				n := logs.count(refusedApproval, cpNS+"/"+name)
				t.Logf("east: the hub tried to approve CertificateRequest %s/%s %d times in 8s", cpNS, name, n)
				if n == 0 || n > 3 {
					t.Errorf("east: the hub tried to approve CertificateRequest %s/%s %d times in 8s, want 1 to 3; its log:\n%s", cpNS, name, n, logs.String())
				}
				if c := condition(getIn(t, ctx, admin, cpNS, name), cmapi.CertificateRequestConditionApproved); c != nil {
					t.Fatalf("east: CertificateRequest %s/%s approved without the hub's permission: %+v", cpNS, name, c)
				}
				// The webhook, not RBAC on the status, refuses: an identity
				// that may write the status but not approve is refused as the
				// hub was, and one that may approve is admitted.
				err := decideAs(ctx, hubKC, cpNS, name, cmapi.CertificateRequestConditionApproved, "test")
				if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "does not have permissions to set approved/denied conditions") {
					t.Fatalf("east: approving CertificateRequest %s/%s without approve on %s: %v, want the webhook's refusal", cpNS, name, signer, err)
				}
				approver := identity(t, ctx, l, admin, cpNS, "cluster-approver", statusWriter(signer, true))
				if err := decideAs(ctx, approver, cpNS, name, cmapi.CertificateRequestConditionApproved, "test"); err != nil {
					t.Fatalf("east: the cluster's approver approving CertificateRequest %s/%s: %v", cpNS, name, err)
				}
			}
			got := waitForIn(t, ctx, admin, cpNS, name, func(cr *cmapi.CertificateRequest) bool { return len(cr.Status.Certificate) > 0 })
			if c := condition(got, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != tc.approvedBy {
				t.Errorf("east: CertificateRequest %s/%s: Approved %+v, want reason %s", cpNS, name, c, tc.approvedBy)
			}
			if c := condition(got, cmapi.CertificateRequestConditionReady); c == nil || c.Reason != cmapi.CertificateRequestReasonIssued {
				t.Errorf("east: CertificateRequest %s/%s: Ready %+v, want Issued", cpNS, name, c)
			}
		})
	}
}

// TestHubYieldsToADecision: another approver decides between the hub's
// read of a request and its approval (the race of two approvers, made
// certain by deciding as the hub's approval is on its way). The hub's
// approval is conditional on what it read, so it is refused as a
// conflict: the other decision stands and is never joined by the hub's.
// A denied intermediate is refused as Denied with the approver's reason,
// and not signed; an approved one is signed.
func TestHubYieldsToADecision(t *testing.T) {
	l := testLab.Get(t)
	for _, tc := range []struct {
		decision cmapi.CertificateRequestConditionType
		want     issuer.Outcome
	}{
		{cmapi.CertificateRequestConditionDenied, issuer.Refused},
		{cmapi.CertificateRequestConditionApproved, issuer.Issued},
	} {
		t.Run(string(tc.decision), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			admin := connect(t, l, "east")
			cpNS, hub := hubNamespace(t, ctx, admin)
			name := createIn(t, ctx, admin, cpNS, "decided-meanwhile", intermediateCSR(t, cpNS), true, meshIssuerRef)
			approver := identity(t, ctx, l, admin, cpNS, "cluster-approver", statusWriter(signerName(cpNS), true))

			// The hub may approve; its approval reaches the API server only
			// after the other approver's decision.
			var answered atomic.Int32
			cfg := identityConfig(t, ctx, l, admin, cpNS, "flotilla-hub", statusWriter(signerName(cpNS), true))
			cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
				return roundTripper(func(req *http.Request) (*http.Response, error) {
					approving := req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/"+name+"/status") &&
						req.URL.Query().Get("fieldManager") == issuer.ApproverFieldManager
					if approving && answered.Load() == 0 {
						if err := decideAs(req.Context(), approver, cpNS, name, tc.decision, "test"); err != nil {
							return nil, fmt.Errorf("the other approver: %w", err)
						}
					}
					resp, err := rt.RoundTrip(req)
					if approving && err == nil {
						answered.Store(int32(resp.StatusCode))
					}
					return resp, err
				})
			}
			hubKC, err := kube.Connect("east", cfg)
			if err != nil {
				t.Fatal(err)
			}
			hub.Cluster = hubKC

			out, err := hub.Reconcile(ctx, getIn(t, ctx, admin, cpNS, name))
			if err != nil || out != tc.want {
				t.Fatalf("east: Reconcile of CertificateRequest %s/%s %s meanwhile: %s, %v; want %s", cpNS, name, tc.decision, out, err, tc.want)
			}
			if code := answered.Load(); code != http.StatusConflict {
				t.Errorf("east: the hub's approval of CertificateRequest %s/%s answered %d, want 409 (conditional on what it read)", cpNS, name, code)
			}
			got := getIn(t, ctx, admin, cpNS, name)
			other := condition(got, tc.decision)
			if other == nil || other.Reason != "test" {
				t.Errorf("east: CertificateRequest %s/%s: %s %+v, want the other approver's (reason test)", cpNS, name, tc.decision, other)
			}
			if tc.decision == cmapi.CertificateRequestConditionDenied {
				if c := condition(got, cmapi.CertificateRequestConditionApproved); c != nil {
					t.Errorf("east: CertificateRequest %s/%s denied by another and approved by the hub: %+v", cpNS, name, c)
				}
				if len(got.Status.Certificate) > 0 {
					t.Errorf("east: denied CertificateRequest %s/%s signed", cpNS, name)
				}
				if c := condition(got, cmapi.CertificateRequestConditionReady); c == nil || c.Reason != cmapi.CertificateRequestReasonDenied || !strings.Contains(c.Message, "decided by the test") {
					t.Errorf("east: denied CertificateRequest %s/%s: Ready %+v, want Denied with the approver's message", cpNS, name, c)
				}
			} else if len(got.Status.Certificate) == 0 {
				t.Errorf("east: CertificateRequest %s/%s approved by another not signed", cpNS, name)
			}
		})
	}
}

// TestDeniedIntermediateReported: the cluster's approver denies the
// intermediate's request while the hub may not approve: the hub never
// approves nor signs it, and waiting for the intermediate (what apply
// does) ends at once with the request and the approver's reason instead
// of at its timeout.
func TestDeniedIntermediateReported(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := connect(t, l, "east")
	cpNS, hub := hubNamespace(t, ctx, admin)
	hub.Cluster = identity(t, ctx, l, admin, cpNS, "flotilla-hub", statusWriter(signerName(cpNS), false))
	hctx, hstop := context.WithCancel(ctx)
	defer hstop()
	go hub.Run(hctx)
	approver := identity(t, ctx, l, admin, cpNS, "cluster-approver", statusWriter(signerName(cpNS), true))

	// The cluster's approver denies each intermediate request it sees.
	dctx, dstop := context.WithCancel(ctx)
	var denier sync.WaitGroup
	denier.Go(func() {
		for dctx.Err() == nil {
			for _, cr := range requestsIn(dctx, admin, cpNS) {
				if condition(cr, cmapi.CertificateRequestConditionDenied) == nil {
					_ = decideAs(dctx, approver, cpNS, cr.Name, cmapi.CertificateRequestConditionDenied, "test")
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	defer func() { dstop(); denier.Wait() }()

	start := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	_, err := certmanager.WaitReady(wctx, admin, cpNS, nil)
	if err == nil || !strings.Contains(err.Error(), "denied") || !strings.Contains(err.Error(), "decided by the test") {
		t.Fatalf("east: waiting for the intermediate in %s after a denial: %v; want the denial with the approver's reason", cpNS, err)
	}
	if wctx.Err() != nil {
		t.Errorf("east: the denial was reported only at the wait's timeout (%s)", time.Since(start).Round(time.Second))
	}
	t.Logf("east: reported after %s: %v", time.Since(start).Round(100*time.Millisecond), err)
	for _, cr := range requestsIn(ctx, admin, cpNS) {
		if c := condition(cr, cmapi.CertificateRequestConditionApproved); c != nil || len(cr.Status.Certificate) > 0 {
			t.Errorf("east: intermediate CertificateRequest %s/%s: Approved %+v, certificate %d bytes; want neither", cpNS, cr.Name, c, len(cr.Status.Certificate))
		}
	}
}

// requestsIn lists the intermediate's requests in ns; none on an error.
func requestsIn(ctx context.Context, c *kube.Cluster, ns string) []*cmapi.CertificateRequest {
	list, err := c.Dynamic.Resource(crGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var out []*cmapi.CertificateRequest
	for i := range list.Items {
		if cr := decodeMap(list.Items[i].Object); cr.Annotations[cmapi.CertificateNameKey] == certmanager.IntermediateCertificateName {
			out = append(out, cr)
		}
	}
	return out
}

// refusedApproval is the hub's log line when it may not approve.
const refusedApproval = "the hub may not approve; waiting for the cluster's approver"

// signerName is the signer of the MeshIssuer in ns, as cert-manager names it.
func signerName(ns string) string {
	return issuer.SignerName(&cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Namespace: ns}, Spec: cmapi.CertificateRequestSpec{IssuerRef: meshIssuerRef}})
}

// statusWriter is what an approver of signer needs: read requests and
// write their status, and, when mayApprove, `approve` on the signer.
func statusWriter(signer string, mayApprove bool) []rbacv1.PolicyRule {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests/status"}, Verbs: []string{"patch", "update"}},
	}
	if mayApprove {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{"cert-manager.io"}, Resources: []string{"signers"}, Verbs: []string{"approve"}, ResourceNames: []string{signer}})
	}
	return rules
}

// identity is a connection to c as a new service account ns/name that
// holds exactly rules, cluster-wide (the hub watches every namespace).
func identity(t *testing.T, ctx context.Context, l *lab.Lab, admin *kube.Cluster, ns, name string, rules []rbacv1.PolicyRule) *kube.Cluster {
	t.Helper()
	kc, err := kube.Connect(admin.Name, identityConfig(t, ctx, l, admin, ns, name, rules))
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func identityConfig(t *testing.T, ctx context.Context, l *lab.Lab, admin *kube.Cluster, ns, name string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	rbac := admin.Kube.RbacV1()
	role := name + "-" + ns
	_, err := admin.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err == nil {
		_, err = rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{})
	}
	if err == nil {
		_, err = rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		}, metav1.CreateOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("%s: identity %s/%s: %v", admin.Name, ns, name, err)
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(context.Background(), role, metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{})
	})
	cfg := l.Cluster(admin.Name).RESTConfig()
	cfg.BearerToken = token(t, ctx, admin, ns, name)
	return cfg
}

// decideAs writes an approver's decision (reason test) as c's identity.
func decideAs(ctx context.Context, c *kube.Cluster, ns, name string, typ cmapi.CertificateRequestConditionType, reason string) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": string(typ), "status": "True", "reason": reason, "message": string(typ) + " decided by the test",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}},
	}}
	_, err := c.Dynamic.Resource(crGVR).Namespace(ns).ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: "approval-test"})
	return err
}

func waitForIn(t *testing.T, ctx context.Context, c *kube.Cluster, ns, name string, done func(*cmapi.CertificateRequest) bool) *cmapi.CertificateRequest {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		cr := getIn(t, ctx, c, ns, name)
		if done(cr) {
			return cr
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: CertificateRequest %s/%s: not as expected within a minute; conditions %+v", c.Name, ns, name, cr.Status.Conditions)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// logBuffer collects a logger's lines, safe for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is the number of lines holding every one of ss.
func (b *logBuffer) count(ss ...string) int {
	n := 0
	for _, l := range strings.Split(b.String(), "\n") {
		if !slices.ContainsFunc(ss, func(s string) bool { return !strings.Contains(l, s) }) {
			n++
		}
	}
	return n
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestApplyReportsDenial: an apply in cert-manager mode whose kubeconfig
// identity may do everything but `approve` (so the hub may not approve its
// intermediate), on clusters whose approver denies it: the apply fails at
// once, its step naming the cluster, the request and the approver's
// reason, and no intermediate is approved or signed.
func TestApplyReportsDenial(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cpNS := fmt.Sprintf("istio-denied-%x", mrand.Uint32())
	clusters := []string{"east", "west"}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	for _, name := range clusters {
		admin := connect(t, l, name)
		opNS := "flotilla-operator"
		if _, err := admin.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		// Every verb on everything but approve (and impersonate): an
		// operator whose hub leaves approval to the cluster.
		op := identityConfig(t, ctx, l, admin, opNS, "all-but-approve", []rbacv1.PolicyRule{
			{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "escalate", "bind"}},
			{NonResourceURLs: []string{"*"}, Verbs: []string{"*"}},
		})
		c := l.Cluster(name)
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.CAData}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: op.BearerToken}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
		t.Cleanup(func() {
			_ = admin.Kube.CoreV1().Namespaces().Delete(context.Background(), cpNS, metav1.DeleteOptions{})
		})

		// The cluster's approver denies each intermediate request it sees.
		approver := identity(t, ctx, l, admin, opNS, "cluster-approver", statusWriter(signerName(cpNS), true))
		dctx, dstop := context.WithCancel(ctx)
		var denier sync.WaitGroup
		denier.Go(func() {
			for dctx.Err() == nil {
				for _, cr := range requestsIn(dctx, admin, cpNS) {
					if condition(cr, cmapi.CertificateRequestConditionDenied) == nil {
						_ = decideAs(dctx, approver, cpNS, cr.Name, cmapi.CertificateRequestConditionDenied, "test")
					}
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
		t.Cleanup(func() { dstop(); denier.Wait() })
	}
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh-denied}
spec:
  topology: multi-primary
  controlPlaneNamespace: %[2]s
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s}
`, kubeconfig, cpNS))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := state.GenerateKey()
	st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	rep, err := (&server.Hub{Store: st}).Apply(ctx, m, server.ApplyOptions{})
	if err == nil {
		err = rep.Err()
	}
	took := time.Since(start)
	t.Logf("apply: %s: %v", took.Round(100*time.Millisecond), err)
	for _, name := range clusters {
		want := name + ": Certificate " + cpNS + "/" + certmanager.IntermediateCertificateName + ": CertificateRequest " + cpNS + "/"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "Denied decided by the test") {
			t.Errorf("%s: apply with the intermediate denied: %v; want a failure naming %q and the approver's reason", name, err, want)
		}
		admin := connect(t, l, name)
		for _, cr := range requestsIn(ctx, admin, cpNS) {
			if c := condition(cr, cmapi.CertificateRequestConditionApproved); c != nil || len(cr.Status.Certificate) > 0 {
				t.Errorf("%s: intermediate CertificateRequest %s/%s: Approved %+v, certificate %d bytes; want neither", name, cpNS, cr.Name, c, len(cr.Status.Certificate))
			}
		}
	}
	if took > time.Minute {
		t.Errorf("apply took %s: the denial waited for a timeout", took.Round(time.Second))
	}
}

// TestServingApprovalNeedsApprove: the hub's approver of the serving
// Certificates it keeps (here istiod's), connected as an identity without
// `approve` on the workload issuer's signer, is refused by cert-manager's
// webhook, says which signer it needs and leaves the request to the
// cluster's approver, after whose approval the Certificate is issued.
// Granted `approve`, its own approval is admitted.
func TestServingApprovalNeedsApprove(t *testing.T) {
	l := testLab.Get(t)
	for _, tc := range []struct {
		name       string
		mayApprove bool
		approvedBy string
	}{
		{"without approve on the signer the cluster's approver decides", false, "test"},
		{"with approve on the signer the hub approves", true, csragent.HubApprovedReason},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			admin := connect(t, l, "east")
			cpNS, hub := hubNamespace(t, ctx, admin)
			hctx, hstop := context.WithCancel(ctx)
			defer hstop()
			go hub.Run(hctx)
			if _, err := certmanager.WaitReady(ctx, admin, cpNS, nil); err != nil {
				t.Fatal(err)
			}
			signer := csragent.SignerName(cpNS, certmanager.WorkloadIssuer())
			rules := append(statusWriter(signer, tc.mayApprove),
				rbacv1.PolicyRule{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificates"}, Verbs: []string{"get"}})
			logs := &logBuffer{}
			approver := &csragent.CertificateApprover{Cluster: identity(t, ctx, l, admin, cpNS, "flotilla-hub", rules), Namespace: cpNS, Log: slog.New(slog.NewTextHandler(logs, nil))}
			go approver.Run(hctx)
			if _, err := admin.Apply(ctx, csragent.IstiodCertificateObject(cpNS, "", certmanager.WorkloadIssuerName)); err != nil {
				t.Fatal(err)
			}
			var name string
			if !tc.mayApprove {
				deadline := time.Now().Add(time.Minute)
				for name == "" {
					for _, line := range strings.Split(logs.String(), "\n") {
						if strings.Contains(line, refusedApproval) && strings.Contains(line, "verb approve on signers.cert-manager.io "+signer) {
							_, rest, _ := strings.Cut(line, "request="+cpNS+"/")
							name, _, _ = strings.Cut(rest, " ")
						}
					}
					if time.Now().After(deadline) {
						t.Fatalf("east: the hub's approver never said it may not approve for %s; its log:\n%s", signer, logs.String())
					}
					time.Sleep(200 * time.Millisecond)
				}
				if c := condition(getIn(t, ctx, admin, cpNS, name), cmapi.CertificateRequestConditionApproved); c != nil {
					t.Fatalf("east: CertificateRequest %s/%s approved without the hub's permission: %+v", cpNS, name, c)
				}
				cluster := identity(t, ctx, l, admin, cpNS, "cluster-approver", statusWriter(signer, true))
				if err := decideAs(ctx, cluster, cpNS, name, cmapi.CertificateRequestConditionApproved, "test"); err != nil {
					t.Fatalf("east: the cluster's approver approving CertificateRequest %s/%s: %v", cpNS, name, err)
				}
			}
			var got *cmapi.Certificate
			deadline := time.Now().Add(time.Minute)
			for got == nil || !certmanager.Ready(got) {
				if time.Now().After(deadline) {
					t.Fatalf("east: Certificate %s/%s never Ready: %+v", cpNS, csragent.IstiodCertificate, got)
				}
				time.Sleep(200 * time.Millisecond)
				got, _ = certificateIn(ctx, admin, cpNS, csragent.IstiodCertificate)
			}
			list, err := admin.Dynamic.Resource(crGVR).Namespace(cpNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range list.Items {
				cr := decodeMap(list.Items[i].Object)
				if cr.Annotations[cmapi.CertificateNameKey] != csragent.IstiodCertificate {
					continue
				}
				if c := condition(cr, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != tc.approvedBy {
					t.Errorf("east: CertificateRequest %s/%s: Approved %+v, want reason %s", cpNS, cr.Name, c, tc.approvedBy)
				}
			}
		})
	}
}
