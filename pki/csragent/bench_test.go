package csragent_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
)

// BenchmarkSigning signs workload CSRs for apps-1/httpbin at 1, 8 and 32
// concurrent clients: through the csr-agent on loopback (gRPC over TLS,
// TokenReview, a CertificateRequest that cert-manager's approver and CA
// issuer controllers sign, its deletion), and with the built-in signer
// (pki.Issuer.SignWorkload in process, same intermediate, same CSRs, no
// cert-manager, no network). Each client has its own connection, as each
// proxy does. Bounded by -benchtime, e.g.:
//
//	go test ./pki/csragent/ -run '^$' -bench Signing -benchtime=200x -timeout 20m
func BenchmarkSigning(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	token := e.token(b, appNS, appSA, "istio-ca")
	csrs := make([]string, 64)
	for i := range csrs {
		csrs[i] = csrFor(b, httpbinID)
	}
	in, err := certmanager.ReadIssued(ctx, e.kc, ns)
	if err != nil {
		b.Fatal(err)
	}
	cc, err := in.CACerts(e.trust, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	builtin, err := pki.NewIssuer(cc, 0)
	if err != nil {
		b.Fatal(err)
	}
	id, err := pki.ParseSPIFFEID(httpbinID)
	if err != nil {
		b.Fatal(err)
	}
	for _, clients := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("csr-agent/clients=%d", clients), func(b *testing.B) {
			conns := make([]securityv1alpha1.IstioCertificateServiceClient, clients)
			for i := range conns {
				conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(e.creds))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				conns[i] = securityv1alpha1.NewIstioCertificateServiceClient(conn)
				// Handshake outside the measurement.
				if _, err := call(ctx, conns[i], token, csrs[0], 3600); err != nil {
					b.Fatal(err)
				}
			}
			load(b, clients, func(worker, i int) error {
				_, err := call(ctx, conns[worker], token, csrs[i%len(csrs)], 3600)
				return err
			})
		})
		b.Run(fmt.Sprintf("builtin/clients=%d", clients), func(b *testing.B) {
			load(b, clients, func(_, i int) error {
				_, err := builtin.SignWorkload(pki.WorkloadRequest{ID: id, CSR: []byte(csrs[i%len(csrs)]), TTL: time.Hour}, time.Now())
				return err
			})
		})
	}
}

// load runs b.N calls of fn spread over clients goroutines and reports
// throughput and the latency median and 99th percentile.
func load(b *testing.B, clients int, fn func(worker, i int) error) {
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range clients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := fn(w, i); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "p99-ms")
}
