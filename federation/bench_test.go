package federation

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// countingTransport counts the API requests one cluster receives.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// BenchmarkLabFullMesh links N lab clusters in a full multi-primary mesh
// (N*(N-1) secrets): "cold" from nothing, in a fresh namespace per
// iteration; "steady" re-running over an up-to-date mesh, the hub's
// reconcile loop. It starts its own lab of the largest N, so it runs only
// when asked:
//
//	FLOTILLA_BENCH_LAB=1 go test ./federation/ -run '^$' -bench LabFullMesh -benchtime 3x -timeout 60m
//
// FLOTILLA_BENCH_SIZES overrides the sizes (default 2,5,10).
func BenchmarkLabFullMesh(b *testing.B) {
	if os.Getenv("FLOTILLA_BENCH_LAB") == "" {
		b.Skip("set FLOTILLA_BENCH_LAB=1 to start a lab of up to 10 clusters")
	}
	sizes := []int{2, 5, 10}
	if s := os.Getenv("FLOTILLA_BENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("FLOTILLA_BENCH_SIZES: %q is not a size", f)
			}
			sizes = append(sizes, n)
		}
	}
	largest := 0
	for _, n := range sizes {
		largest = max(largest, n)
	}
	names := make([]string, largest)
	for i := range names {
		names[i] = fmt.Sprintf("b%02d", i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Clusters: names, Log: os.Stderr})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Stop()

	for _, n := range sizes {
		counts := make([]*atomic.Int64, n)
		m := Mesh{Topology: MultiPrimary}
		for i, lc := range l.Clusters()[:n] {
			counts[i] = &atomic.Int64{}
			cfg := lc.RESTConfig()
			cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, n: counts[i]} }
			kc, err := kube.Connect(lc.Name, cfg)
			if err != nil {
				b.Fatal(err)
			}
			m.Clusters = append(m.Clusters, Cluster{Member: Member{Name: lc.Name}, Kube: kc})
		}
		reset := func() {
			for _, c := range counts {
				c.Store(0)
			}
		}
		report := func(b *testing.B) {
			var total, most int64
			for _, c := range counts {
				total += c.Load()
				most = max(most, c.Load())
			}
			per := float64(b.N) * float64(n)
			b.ReportMetric(float64(total)/per, "calls/cluster")
			b.ReportMetric(float64(most)/float64(b.N), "max-calls/cluster")
			b.ReportMetric(float64(n*(n-1)), "secrets")
		}
		run := 0
		b.Run(fmt.Sprintf("clusters=%d/cold", n), func(b *testing.B) {
			reset()
			for b.Loop() {
				run++
				o := Options{Namespace: fmt.Sprintf("bench-%d-%d", n, run), AllowLoopback: true}
				res, err := Reconcile(ctx, m, nil, o)
				if err != nil {
					b.Fatal(err)
				}
				if err := res.Err(); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		b.Run(fmt.Sprintf("clusters=%d/steady", n), func(b *testing.B) {
			o := Options{Namespace: fmt.Sprintf("bench-%d-steady", n), AllowLoopback: true}
			first, err := Reconcile(ctx, m, nil, o)
			if err != nil || first.Err() != nil {
				b.Fatalf("%v %v", err, first.Err())
			}
			reset()
			for b.Loop() {
				res, err := Reconcile(ctx, m, first.Credentials, o)
				if err != nil {
					b.Fatal(err)
				}
				for _, lr := range res.Links {
					if lr.Action != Unchanged {
						b.Fatalf("%s: %s (%v)", lr.Link, lr.Action, lr.Err)
					}
				}
			}
			report(b)
		})
	}
}
