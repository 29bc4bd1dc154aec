// Package approval runs cert-manager mode on a lab whose cert-manager has
// no default approver (upstream's --controllers=*,-certificaterequests-approver):
// approval is explicit, and flotilla approves by policy.
package approval

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var testLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, CertManager: true, CertManagerWithoutApprover: true, CertManagerWebhook: true})

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

var crGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificaterequests"}

const ns = "istio-system"

// TestHubApproves: with nothing approving by default, an
// apply in cert-manager mode still gets each cluster's intermediate, the
// hub having approved exactly its request (Approved, reason
// issuer.flotilla.dev) before signing it, and the serving Certificates it
// keeps for the csr-agent and istiod are issued, their requests approved
// by the hub (hub.flotilla.dev); a request outside the policy
// is refused with its reason and never approved; a workload request,
// which the hub's policy does not cover, is not approved by anyone.
func TestHubApproves(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh-approval}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {mode: cert-manager, keyAlgorithm: ECDSA-P256, certManager: {csrAgent: {image: flotilla:test}}}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := state.GenerateKey()
	st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the server's stop, registered later
	h := &server.Hub{Store: st}
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	// The hub server keeps its issuer (and approver) running between
	// reconciles; its interval is beyond the test, so only they act.
	srv, err := server.NewServer(ctx, h, server.ServerOptions{
		Listen: "127.0.0.1:0", Token: strings.Repeat("t", 32), Interval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GracePeriod: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	east := connect(t, l, "east")
	for _, name := range []string{"east", "west"} {
		kc := connect(t, l, name)
		cc, err := pki.ReadCACerts(ctx, kc, ns)
		if err != nil || cc == nil {
			t.Fatalf("%s: cacerts: %v", name, err)
		}
		in, err := cc.CACerts.Intermediate(name, ns)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.CheckIntermediate(in.Cert, name, ns); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		crs := requests(t, ctx, kc, func(cr *cmapi.CertificateRequest) bool {
			return cr.Annotations[cmapi.CertificateNameKey] == certmanager.IntermediateCertificateName
		})
		if len(crs) == 0 {
			t.Fatalf("%s: no CertificateRequest of Certificate %s/%s", name, ns, certmanager.IntermediateCertificateName)
		}
		for _, cr := range crs {
			if c := condition(cr, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != issuer.ApprovedReason {
				t.Errorf("%s: CertificateRequest %s/%s: Approved %+v, want reason %s", name, ns, cr.Name, c, issuer.ApprovedReason)
			}
		}
		// The serving Certificates the hub keeps for the agent and istiod
		// are issued too, their requests approved by the hub.
		for _, crt := range []string{csragent.ServiceName, csragent.IstiodCertificate} {
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
				got, err := certificate(ctx, kc, crt)
				return err == nil && certmanager.Ready(got), nil
			})
			if err != nil {
				got, gerr := certificate(ctx, kc, crt)
				t.Fatalf("%s: Certificate %s/%s never Ready: %v (%+v, %v)", name, ns, crt, err, got, gerr)
			}
			for _, cr := range requests(t, ctx, kc, func(cr *cmapi.CertificateRequest) bool { return cr.Annotations[cmapi.CertificateNameKey] == crt }) {
				if c := condition(cr, cmapi.CertificateRequestConditionApproved); c == nil || c.Reason != csragent.HubApprovedReason {
					t.Errorf("%s: CertificateRequest %s/%s: Approved %+v, want reason %s", name, ns, cr.Name, c, csragent.HubApprovedReason)
				}
			}
		}
	}

	// Outside the policy: refused with the reason, never approved.
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	westIntermediate := csr(t, p256, &x509.CertificateRequest{
		Subject:  pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"west"}},
		DNSNames: []string{"istiod.istio-system.svc"},
	})
	bad := create(t, ctx, east, "approval-another-cluster", westIntermediate, true,
		cmmeta.IssuerReference{Group: v1alpha1.Group, Kind: v1alpha1.MeshIssuerKind, Name: certmanager.MeshIssuerName})
	got := waitFor(t, ctx, east, bad, func(cr *cmapi.CertificateRequest) bool {
		c := condition(cr, cmapi.CertificateRequestConditionReady)
		return c != nil && c.Reason == cmapi.CertificateRequestReasonFailed
	})
	if c := condition(got, cmapi.CertificateRequestConditionReady); !strings.Contains(c.Message, "L=east") {
		t.Errorf("east: CertificateRequest %s/%s refused saying %q, want the subject's reason", ns, bad, c.Message)
	}
	if c := condition(got, cmapi.CertificateRequestConditionApproved); c != nil {
		t.Errorf("east: CertificateRequest %s/%s outside the policy was approved: %+v", ns, bad, c)
	}

	// The lab's approver is really off: a workload request left alone
	// stays unapproved and unsigned, while one the test approves (as an
	// approver would) is signed by cert-manager's CA issuer meanwhile.
	workload := cmmeta.IssuerReference{Group: "cert-manager.io", Kind: "Issuer", Name: certmanager.WorkloadIssuerName}
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/default/sa/approval-test")
	leaf := csr(t, p256, &x509.CertificateRequest{URIs: []*url.URL{spiffe}})
	alone := create(t, ctx, east, "approval-left-alone", leaf, false, workload)
	approved := create(t, ctx, east, "approval-approved-by-test", leaf, false, workload)
	approve(t, ctx, east, approved)
	waitFor(t, ctx, east, approved, func(cr *cmapi.CertificateRequest) bool { return len(cr.Status.Certificate) > 0 })
	left := get(t, ctx, east, alone)
	if c := condition(left, cmapi.CertificateRequestConditionApproved); c != nil || len(left.Status.Certificate) > 0 {
		t.Errorf("east: CertificateRequest %s/%s nobody approved: Approved %+v, certificate %d bytes", ns, alone, c, len(left.Status.Certificate))
	}
}

func certificate(ctx context.Context, c *kube.Cluster, name string) (*cmapi.Certificate, error) {
	return certificateIn(ctx, c, ns, name)
}

func certificateIn(ctx context.Context, c *kube.Cluster, ns, name string) (*cmapi.Certificate, error) {
	u, err := c.Dynamic.Resource(schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	crt := &cmapi.Certificate{}
	return crt, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, crt)
}

func connect(t *testing.T, l *lab.Lab, name string) *kube.Cluster {
	t.Helper()
	kc, err := l.Cluster(name).Connect()
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func csr(t *testing.T, key *ecdsa.PrivateKey, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// create writes a raw CertificateRequest in ns (deleted after the test)
// and returns its name.
func create(t *testing.T, ctx context.Context, c *kube.Cluster, name string, csrPEM []byte, isCA bool, ref cmmeta.IssuerReference) string {
	t.Helper()
	return createIn(t, ctx, c, ns, name, csrPEM, isCA, ref)
}

func createIn(t *testing.T, ctx context.Context, c *kube.Cluster, ns, name string, csrPEM []byte, isCA bool, ref cmmeta.IssuerReference) string {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"request":   base64.StdEncoding.EncodeToString(csrPEM),
			"isCA":      isCA,
			"usages":    []any{"digital signature"},
			"issuerRef": map[string]any{"group": ref.Group, "kind": ref.Kind, "name": ref.Name},
		},
	}}
	if _, err := c.Apply(ctx, obj); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Dynamic.Resource(crGVR).Namespace(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// approve writes the Approved condition as an approver would.
func approve(t *testing.T, ctx context.Context, c *kube.Cluster, name string) {
	t.Helper()
	approveIn(t, ctx, c, ns, name)
}

func approveIn(t *testing.T, ctx context.Context, c *kube.Cluster, ns, name string) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": "Approved", "status": "True", "reason": "test", "message": "approved by the test",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}},
	}}
	if _, err := c.Dynamic.Resource(crGVR).Namespace(ns).ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: "approval-test"}); err != nil {
		t.Fatalf("%s: approve CertificateRequest %s/%s: %v", c.Name, ns, name, err)
	}
}

func get(t *testing.T, ctx context.Context, c *kube.Cluster, name string) *cmapi.CertificateRequest {
	t.Helper()
	return getIn(t, ctx, c, ns, name)
}

func getIn(t *testing.T, ctx context.Context, c *kube.Cluster, ns, name string) *cmapi.CertificateRequest {
	t.Helper()
	u, err := c.Dynamic.Resource(crGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: CertificateRequest %s/%s: %v", c.Name, ns, name, err)
	}
	return decode(t, u)
}

func decode(t *testing.T, u *unstructured.Unstructured) *cmapi.CertificateRequest {
	t.Helper()
	cr := &cmapi.CertificateRequest{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cr); err != nil {
		t.Fatal(err)
	}
	return cr
}

// decodeMap is decode for a goroutine: a request that does not decode is
// an empty one.
func decodeMap(obj map[string]any) *cmapi.CertificateRequest {
	cr := &cmapi.CertificateRequest{}
	_ = runtime.DefaultUnstructuredConverter.FromUnstructured(obj, cr)
	return cr
}

func waitFor(t *testing.T, ctx context.Context, c *kube.Cluster, name string, done func(*cmapi.CertificateRequest) bool) *cmapi.CertificateRequest {
	t.Helper()
	var cr *cmapi.CertificateRequest
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cr = get(t, ctx, c, name)
		return done(cr), nil
	})
	if err != nil {
		t.Fatalf("%s: CertificateRequest %s/%s: %v; conditions %+v", c.Name, ns, name, err, cr.Status.Conditions)
	}
	return cr
}

func requests(t *testing.T, ctx context.Context, c *kube.Cluster, keep func(*cmapi.CertificateRequest) bool) []*cmapi.CertificateRequest {
	t.Helper()
	list, err := c.Dynamic.Resource(crGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("%s: list CertificateRequests in %s: %v", c.Name, ns, err)
	}
	var out []*cmapi.CertificateRequest
	for i := range list.Items {
		if cr := decode(t, &list.Items[i]); keep(cr) {
			out = append(out, cr)
		}
	}
	return out
}

func condition(cr *cmapi.CertificateRequest, typ cmapi.CertificateRequestConditionType) *cmapi.CertificateRequestCondition {
	for i, c := range cr.Status.Conditions {
		if c.Type == typ && c.Status == cmmeta.ConditionTrue || c.Type == typ && typ == cmapi.CertificateRequestConditionReady {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}
