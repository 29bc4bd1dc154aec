package dashboard_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/chromedp/chromedp"

	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

var testLab = lab.NewShared("east", "west", "north")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

const hubToken = "0123456789abcdef-browser-test-token"

// labMesh: three primaries, two of them on one network, with short-lived
// intermediates (72h: inside `flotilla check`'s 30-day warning).
func labMesh(t *testing.T, l *lab.Lab) *spec.Mesh {
	t.Helper()
	m, err := spec.Parse("mesh.yaml", fmt.Appendf(nil, `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: dashboard}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256, intermediateTTL: 72h}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %[1]s}
  - {name: west, context: west, network: network1, kubeconfig: %[1]s}
  - {name: north, context: north, network: network2, kubeconfig: %[1]s}
`, l.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// TestDashboardLab signs in to a hub over a three-cluster lab mesh in a
// real browser: every cluster and every link shows; a deleted remote
// secret turns its link red, and the reconcile loop's repair turns it
// green again; the short-lived intermediates carry an expiry warning;
// checks re-run from the page; the history lists the repair. Each view is
// screenshotted.
func TestDashboardLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"), state.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &server.Hub{Store: st}
	m := labMesh(t, l)
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}

	// The loop's interval is long enough for the page to see the deleted
	// secret before the repair, which the test waits for.
	const interval = 30 * time.Second
	caFile := filepath.Join(t.TempDir(), "hub-ca.pem")
	srv, err := server.NewServer(ctx, h, server.ServerOptions{
		Listen: "127.0.0.1:0", Token: hubToken, Interval: interval, DashboardRefresh: time.Second,
		GracePeriod: 10 * time.Second, CAOut: caFile,
		Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(runCtx) }()
	defer func() {
		stop()
		start := time.Now()
		if err := <-ran; err != nil {
			t.Errorf("server: %v", err)
		}
		// An open event stream must not hold the shutdown for the grace period.
		t.Logf("server stopped in %v with the page open", time.Since(start).Round(time.Millisecond))
	}()

	b := browser(t, srv.URL(), srv.CAPEM())
	signIn(t, b, srv.URL(), hubToken)

	// Every cluster, in its network, and every link, authenticating.
	clusters := []string{"east", "west", "north"}
	for _, c := range clusters {
		waitFor(t, b, time.Minute, "cluster "+c, jsCount(fmt.Sprintf(`.node[data-cluster=%q]`, c))+" === 1")
	}
	waitFor(t, b, 10*time.Second, "network1 holds east and west",
		jsCount(`[data-network="network1"] [data-cluster="east"]`)+" === 1 && "+jsCount(`[data-network="network1"] [data-cluster="west"]`)+" === 1")
	for _, from := range clusters {
		for _, to := range clusters {
			if from == to {
				continue
			}
			// One arrow in the graph and one cell in the matrix.
			waitFor(t, b, time.Minute, fmt.Sprintf("link %s → %s authenticates", from, to),
				linkShown(from, to, "ok"))
		}
	}
	waitFor(t, b, 10*time.Second, "six links, no more", jsCount("path.link")+" === 6")
	screenshot(t, b, "topology")

	// Delete west's secret for east right after a reconcile, so that the
	// page sees it missing before the loop repairs it.
	c, err := server.NewClient(server.ClientOptions{URL: srv.URL(), Token: hubToken, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	afterReconcile(t, ctx, c)
	west, err := l.Cluster("west").Connect()
	if err != nil {
		t.Fatal(err)
	}
	if err := west.Kube.CoreV1().Secrets("istio-system").Delete(ctx, "istio-remote-secret-east", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, interval-5*time.Second, "link west → east turns red", linkShown("west", "east", "failing"))
	screenshot(t, b, "topology-link-failing")
	waitFor(t, b, 3*interval, "link west → east turns green again", linkShown("west", "east", "ok"))
	screenshot(t, b, "topology-repaired")

	// Trust: the 72h intermediates are flagged, by keyboard navigation.
	show(t, b, "trust")
	for _, cl := range clusters {
		waitFor(t, b, 10*time.Second, "expiry warning for "+cl,
			jsCount(fmt.Sprintf(`#intermediates tr[data-cluster=%q][data-expiry="warning"]`, cl))+" === 1")
	}
	// One reader token per cluster, held by the two others.
	for _, cl := range clusters {
		waitFor(t, b, 10*time.Second, "the reader token of "+cl, jsCount(fmt.Sprintf(`#readers tbody tr[data-cluster=%q]`, cl))+" === 1")
	}
	screenshot(t, b, "trust")

	// Checks: re-run from the page; the expiring intermediates fail with a hint.
	show(t, b, "checks")
	before, err := chromedp.Run(b, chromedp.TextContent(chromedp.ID("checks-when")))
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(b, chromedp.Click(chromedp.ID("rerun"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, time.Minute, "checks re-run", fmt.Sprintf("document.getElementById('checks-when').textContent.startsWith('as of') && document.getElementById('checks-when').textContent !== %q", before))
	waitFor(t, b, 10*time.Second, "expiring intermediates fail with a hint",
		jsCount(`#checks tr[data-check="intermediate CA valid"][data-ok="false"]`)+" === 3 && "+
			`[...document.querySelectorAll('#checks tr[data-ok="false"] td:last-child')].every(td => td.textContent.includes('flotilla'))`)
	screenshot(t, b, "checks")

	// History: the reconcile loop's repair of west's secret.
	show(t, b, "history")
	waitFor(t, b, 10*time.Second, "the repair in the history",
		jsCount(`#repairs tr[data-cluster="west"][data-step="secret istio-system/istio-remote-secret-east"][data-result="created"]`)+" >= 1")
	waitFor(t, b, 10*time.Second, "the first apply in the journal", jsCount(`#journal tr[data-apply="1"]`)+" === 1")
	screenshot(t, b, "history")
}

// afterReconcile returns right after a reconcile has finished.
func afterReconcile(t *testing.T, ctx context.Context, c *server.Client) {
	t.Helper()
	last := func() (uint64, bool) {
		j, err := c.Journal(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(j) == 0 {
			return 0, false
		}
		return j[0].ID, j[0].Source == "reconcile" && !j[0].End.IsZero()
	}
	first, _ := last()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if id, done := last(); done && id > first {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no reconcile finished within 2 minutes")
}
