package certmanager_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
)

// BenchmarkIntermediateIssuance: from nothing to a written cacerts, for
// one cluster's intermediate, each iteration in a fresh namespace of east.
//
//   - hub-issuer: the cert-manager objects applied, cert-manager's
//     controllers making the request, the hub's MeshIssuer signing it
//     (already watching, as in a running hub), cert-manager writing the
//     Secret, flotilla projecting cacerts.
//   - builtin: the hub generates the key and signs in process, then
//     writes cacerts.
//
// Same ECDSA-P256 key algorithm both ways. For example:
//
//	go test ./pki/certmanager -run '^$' -bench IntermediateIssuance -benchtime=5x
func BenchmarkIntermediateIssuance(b *testing.B) {
	ctx := context.Background()
	east := connect(b, "east")
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		b.Fatal(err)
	}
	trust := pki.NewBundle(root.Cert)
	run := 0
	b.Run("hub-issuer", func(b *testing.B) {
		for b.Loop() {
			run++
			ns := fmt.Sprintf("bench-cm-%d-%d", time.Now().Unix()%100000, run)
			hctx, stop := context.WithCancel(ctx)
			hub := &issuer.Controller{Cluster: east, Signer: issuer.Signer{Cluster: "east", Namespace: ns, Root: root}}
			go hub.Run(hctx)
			if _, err := certmanager.Apply(ctx, east, certmanager.Config{Cluster: "east", Namespace: ns}); err != nil {
				b.Fatal(err)
			}
			if _, err := certmanager.WaitReady(ctx, east, ns, nil); err != nil {
				b.Fatal(err)
			}
			if _, err := certmanager.Project(ctx, east, ns, trust, pki.Refuse); err != nil {
				b.Fatal(err)
			}
			stop()
		}
	})
	b.Run("builtin", func(b *testing.B) {
		for b.Loop() {
			run++
			ns := fmt.Sprintf("bench-bi-%d-%d", time.Now().Unix()%100000, run)
			in, err := root.IssueIntermediate("east", ns, pki.Config{KeyAlgorithm: pki.ECDSAP256})
			if err != nil {
				b.Fatal(err)
			}
			cc, err := pki.NewCACerts(in, root, trust)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := pki.WriteCACerts(ctx, east, ns, cc, pki.Refuse); err != nil {
				b.Fatal(err)
			}
		}
	})
}
