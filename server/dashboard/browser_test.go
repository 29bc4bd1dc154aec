package dashboard_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser tests drive Debian's chromium, headless. It must be installed:
// a missing browser fails the test rather than skipping it (.ci/run
// installs it).

// screenshotDir is $FLOTILLA_SCREENSHOTS, else scenarios/dashboard/screenshots
// in the repository (ignored by git).
func screenshotDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("FLOTILLA_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "scenarios", "dashboard", "screenshots")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// chromiumPath finds the browser or fails the test.
func chromiumPath(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: apt-get install -y chromium (.ci/run does)")
	return ""
}

// browser starts a headless chromium that trusts the hub's serving key
// alone (its SPKI pinned; no certificate check is switched off).
func browser(t testing.TB, hubURL string, caPEM []byte) context.Context {
	t.Helper()
	spki := servingKeyPin(t, hubURL, caPEM)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, // tests run as root
		chromedp.WindowSize(1400, 1100),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki),
		chromedp.Flag("disable-background-networking", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// servingKeyPin is the base64 SHA-256 of the hub's serving certificate's
// public key, read over a connection verified against caPEM.
func servingKeyPin(t testing.TB, hubURL string, caPEM []byte) string {
	t.Helper()
	u, err := url.Parse(hubURL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("hub CA: no certificate")
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: pool, ServerName: u.Hostname()})
	if err != nil {
		t.Fatalf("hub TLS: %v", err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// signIn opens the hub's page, types the token into the sign-in form and
// waits for the dashboard's first render.
func signIn(t testing.TB, ctx context.Context, hubURL, token string) {
	t.Helper()
	err := chromedp.Do(ctx,
		chromedp.Navigate(hubURL+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitReady(chromedp.ID("topology-graph")),
	)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(loc, token) {
		t.Errorf("the token is in the URL: %s", loc)
	}
}

// waitFor polls a JavaScript expression until it is true, failing the test
// after timeout with what.
func waitFor(t testing.TB, ctx context.Context, timeout time.Duration, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("Boolean("+expr+")"))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			screenshot(t, ctx, "failed")
			t.Fatalf("%s: not seen within %v (the page is in failed.png)", what, timeout)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// show switches to a view by keyboard: focus its tab and press Enter.
func show(t testing.TB, ctx context.Context, view string) {
	t.Helper()
	err := chromedp.Do(ctx,
		chromedp.Focus(chromedp.ID("tab-"+view)),
		chromedp.KeyEvent("\r"),
	)
	if err != nil {
		t.Fatalf("show %s: %v", view, err)
	}
	waitFor(t, ctx, 10*time.Second, "view "+view, fmt.Sprintf("document.body.dataset.view === %q && !document.getElementById('view-%s').hidden", view, view))
}

func screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(screenshotDir(t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// linkShown is a JavaScript test that the link from → to shows with health
// both as an arrow in the graph and as a cell in the matrix.
func linkShown(from, to, health string) string {
	sel := fmt.Sprintf(`[data-from=%q][data-to=%q][data-health=%q]`, from, to, health)
	return jsCount("path.link"+sel) + " === 1 && " + jsCount("td.cell"+sel) + " === 1"
}

func jsCount(sel string) string {
	return fmt.Sprintf("document.querySelectorAll(%q).length", sel)
}
