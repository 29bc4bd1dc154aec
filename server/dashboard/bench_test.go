package dashboard_test

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flotillamesh/flotilla/server/dashboard"
)

// fleet is a synthetic hub API: n primaries on n/5 networks, every one
// reading every other (n·(n-1) links), one link whose health flips.
type fleet struct {
	n      int
	broken atomic.Bool // c00 → c01 fails
}

func (f *fleet) name(i int) string { return fmt.Sprintf("c%02d", i) }

func (f *fleet) handler() http.Handler {
	now := time.Now().UTC()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		type rs struct {
			Name, Namespace, Target string
			Expected, Healthy       bool
			Error                   string `json:",omitempty"`
		}
		type cl struct {
			Name, Role, Network, ControlPlane, GatewayAddress, RootFingerprint, IntermediateSerial string
			Reachable, IntermediateChainValid                                                      bool
			IntermediateNotAfter                                                                   time.Time
			RemoteSecrets                                                                          []rs
			Drift                                                                                  []string
		}
		var cs []cl
		for i := range f.n {
			c := cl{Name: f.name(i), Role: "primary", Network: fmt.Sprintf("network%d", i/5), ControlPlane: f.name(i),
				GatewayAddress: fmt.Sprintf("10.0.%d.10", i), RootFingerprint: "AB:CD", IntermediateSerial: fmt.Sprint(1000 + i),
				Reachable: true, IntermediateChainValid: true, IntermediateNotAfter: now.Add(time.Duration(20+i*10) * 24 * time.Hour), Drift: []string{}}
			for j := range f.n {
				if i == j {
					continue
				}
				s := rs{Name: "istio-remote-secret-" + f.name(j), Namespace: "istio-system", Target: f.name(j), Expected: true, Healthy: true}
				if i == 0 && j == 1 && f.broken.Load() {
					s.Healthy, s.Error = false, "Unauthorized"
				}
				c.RemoteSecrets = append(c.RemoteSecrets, s)
			}
			cs = append(cs, c)
		}
		writeCamel(w, map[string]any{"mesh": "fleet", "topology": "multi-primary", "rootFingerprint": "AB:CD", "observedAt": now, "clusters": cs})
	})
	mux.HandleFunc("GET /api/v1/trust", func(w http.ResponseWriter, _ *http.Request) {
		var readers []map[string]any
		for j := range f.n {
			var held []string
			for i := range f.n {
				if i != j {
					held = append(held, f.name(i))
				}
			}
			readers = append(readers, map[string]any{"cluster": f.name(j), "heldBy": held, "issuedAt": now.Add(-24 * time.Hour), "expiresAt": now.Add(364 * 24 * time.Hour)})
		}
		writeCamel(w, map[string]any{"readers": readers})
	})
	mux.HandleFunc("GET /api/v1/journal", func(w http.ResponseWriter, _ *http.Request) {
		var j []map[string]any
		for i := 50; i > 0; i-- {
			j = append(j, map[string]any{"id": i, "start": now.Add(-time.Duration(i) * time.Minute), "end": now.Add(-time.Duration(i)*time.Minute + 2*time.Second),
				"specHash": "sha256:0123456789abcdef", "source": "reconcile", "result": "succeeded",
				"steps": []map[string]any{{"cluster": "c00", "step": "secret istio-system/istio-remote-secret-c01", "result": "unchanged"}}})
		}
		writeCamel(w, j)
	})
	mux.HandleFunc("GET /api/v1/check", func(w http.ResponseWriter, _ *http.Request) {
		var cs []map[string]any
		for i := range f.n {
			cs = append(cs, map[string]any{"name": "remote secrets authenticate", "cluster": f.name(i), "ok": true})
		}
		writeCamel(w, cs)
	})
	return mux
}

// writeCamel writes v as JSON with the API's lower-camel field names.
func writeCamel(w http.ResponseWriter, v any) {
	raw, _ := json.Marshal(v)
	var generic any
	_ = json.Unmarshal(raw, &generic)
	_ = json.NewEncoder(w).Encode(camel(generic))
}

func camel(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, x := range t {
			out[string(k[0]|0x20)+k[1:]] = camel(x)
		}
		return out
	case []any:
		for i := range t {
			t[i] = camel(t[i])
		}
	}
	return v
}

// BenchmarkDashboard20 measures, in the browser, the dashboard over a
// fleet of 20 clusters (380 links): the time from navigation to the first
// render of every link, and the time from a link's change at the API to
// the render that shows it (which includes waiting for the next refresh,
// every 250 ms here). Figures, not assertions:
//
//	go test ./server/dashboard -run '^$' -bench Dashboard20 -benchtime 5x
func BenchmarkDashboard20(b *testing.B) {
	const refresh = 250 * time.Millisecond
	f := &fleet{n: 20}
	links := f.n * (f.n - 1)
	d := dashboard.New(dashboard.Options{Token: hubToken, API: f.handler(), Refresh: refresh})
	ts := httptest.NewTLSServer(d)
	defer func() { d.Close(); ts.Close() }()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	ctx := browser(b, ts.URL, caPEM)
	signIn(b, ctx, ts.URL, hubToken)

	var first, update, render []float64
	for b.Loop() {
		// A fresh page load.
		if err := chromedp.Do(ctx, chromedp.Navigate(ts.URL+"/")); err != nil {
			b.Fatal(err)
		}
		waitFor(b, ctx, time.Minute, "first render", fmt.Sprintf("window.flotilla && window.flotilla.firstRender && %s === %d", jsCount("path.link"), links))
		ms, err := chromedp.Run(ctx, chromedp.Evaluate[float64]("window.flotilla.firstRender.sinceNavigation"))
		if err != nil {
			b.Fatal(err)
		}
		first = append(first, ms)

		// Flip c00 → c01 and time the render that shows it.
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](`window.flotilla.watch = {from: "c00", to: "c01"}`)); err != nil {
			b.Fatal(err)
		}
		want := map[bool]string{true: "ok", false: "failing"}[f.broken.Load()]
		t0 := time.Now().UnixMilli()
		f.broken.Store(!f.broken.Load())
		waitFor(b, ctx, time.Minute, "link c00 → c01 "+want, linkShown("c00", "c01", want))
		at, err := chromedp.Run(ctx, chromedp.Evaluate[float64](fmt.Sprintf(
			`window.flotilla.renders.find(r => r.at >= %d && r.watched === %q).at`, t0, want)))
		if err != nil {
			b.Fatal(err)
		}
		update = append(update, at-float64(t0))
		avg, err := chromedp.Run(ctx, chromedp.Evaluate[float64](
			`(() => { const r = window.flotilla.renders; return r.reduce((s, x) => s + x.ms, 0) / r.length; })()`))
		if err != nil {
			b.Fatal(err)
		}
		render = append(render, avg)
	}
	b.StopTimer()
	screenshot(b, ctx, "topology-20-clusters")
	b.ReportMetric(median(first), "ms-first-render")
	b.ReportMetric(median(update), "ms-link-update")
	b.ReportMetric(median(render), "ms-render")
	b.Logf("%d clusters, %d links, refresh every %v: first render %.0f ms, changed link shown after %.0f ms, one render %.1f ms (medians of %d)",
		f.n, links, refresh, median(first), median(update), median(render), len(first))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
