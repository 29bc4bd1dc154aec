package csragent_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/flotillamesh/flotilla/pki/csragent"
)

// TestLabFlood: one identity floods an agent whose per-identity bucket
// holds 3 and never refills. Exactly 3 calls are signed; every other one
// is ResourceExhausted with a retry hint, and no CertificateRequest is
// created for it.
func TestLabFlood(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := csragent.New(csragent.Options{
		Cluster: e.kc, Namespace: ns, TrustBundle: e.trust,
		Limits: csragent.Limits{RequestsPerIdentity: csragent.Limit{Rate: 0, Burst: 3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ctx, lis, &tls.Config{Certificates: []tls.Certificate{e.serving}, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(e.creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := securityv1alpha1.NewIstioCertificateServiceClient(conn)

	// Count the agent's CertificateRequests as the API server records them.
	gvr := schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificaterequests"}
	list, err := e.kc.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := e.kc.Dynamic.Resource(gvr).Namespace(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	token := e.token(t, appNS, appSA, "istio-ca")
	const calls = 20
	codesSeen := make([]codes.Code, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			_, err := call(ctx, client, token, csrFor(t, httpbinID), 3600)
			st := status.Convert(err)
			codesSeen[i] = st.Code()
			if st.Code() == codes.ResourceExhausted {
				var hint bool
				for _, d := range st.Details() {
					_, hint = d.(*errdetails.RetryInfo)
				}
				if !hint {
					t.Errorf("call %d: ResourceExhausted without a retry hint: %v", i, err)
				}
			} else if err != nil {
				t.Errorf("call %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	var ok int
	for _, c := range codesSeen {
		if c == codes.OK {
			ok++
		}
	}
	if ok != 3 {
		t.Fatalf("%d calls signed, want the bucket's 3 (codes %v)", ok, codesSeen)
	}

	// A sentinel request written after the flood: the watch delivers
	// events in order, so every request the flood created comes before it.
	sentinel := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
		"metadata": map[string]any{"name": "flood-sentinel", "namespace": ns},
		"spec": map[string]any{
			"request":   base64.StdEncoding.EncodeToString([]byte(csrFor(t, httpbinID))),
			"issuerRef": map[string]any{"name": "no-such-issuer", "kind": "Issuer", "group": "cert-manager.io"},
		},
	}}
	if _, err := e.kc.Apply(ctx, sentinel); err != nil {
		t.Fatal(err)
	}
	defer e.kc.Dynamic.Resource(gvr).Namespace(ns).Delete(context.Background(), "flood-sentinel", metav1.DeleteOptions{})
	created := 0
	for ev := range w.ResultChan() {
		u, isObj := ev.Object.(*unstructured.Unstructured)
		if !isObj || ev.Type != watch.Added {
			continue
		}
		if u.GetName() == "flood-sentinel" {
			if created != ok {
				t.Fatalf("%d CertificateRequests created for %d signed calls: refused calls created some", created, ok)
			}
			return
		}
		if strings.HasPrefix(u.GetName(), "csr-agent-") {
			created++
		}
	}
	t.Fatal("watch ended before the sentinel")
}
