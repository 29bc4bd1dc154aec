package pkimodes

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/server"
)

// followDeadline is the promise: cacerts follows a renewal
// within 10 s of it being asked for.
const followDeadline = 10 * time.Second

// TestHubFollowsForcedRenewal runs the hub server over a cert-manager mode
// mesh with a reconcile interval far beyond the test, so that only its
// watch can act: a renewal forced as `cmctl renew` does (the Certificate's
// Issuing condition) is signed by the hub's issuer and lands in cacerts
// within followDeadline.
func TestHubFollowsForcedRenewal(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, ns := isolatedMesh(t, l)
	h := newHub(t)
	applyMesh(t, ctx, h, m)
	east := connectLab(t, l, "east")

	logs := &signalHandler{t: t, seen: make(chan string, 1)}
	srv, err := server.NewServer(ctx, h, server.ServerOptions{
		Listen: "127.0.0.1:0", Token: strings.Repeat("t", 32), Interval: time.Hour,
		Logger: slog.New(logs), GracePeriod: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	// The watch starts right after the first reconcile.
	select {
	case msg := <-logs.seen:
		if msg != "reconciled" {
			t.Fatalf("the hub's first reconcile: %s", msg)
		}
	case <-ctx.Done():
		t.Fatal("the hub never reconciled")
	}

	before, err := certmanager.ReadIssued(ctx, east, ns)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := projected(t, ctx, east, ns); !got.Equal(before.Cert) {
		t.Fatalf("east: cacerts does not hold cert-manager's intermediate before the renewal")
	}
	asked := time.Now()
	if err := certmanager.Renew(ctx, east, ns); err != nil {
		t.Fatal(err)
	}
	for {
		got, roots := projected(t, ctx, east, ns)
		if !got.Equal(before.Cert) {
			issued, err := certmanager.ReadIssued(ctx, east, ns)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(issued.Cert) {
				t.Fatalf("east: cacerts holds serial %s, cert-manager's secret %s/%s serial %s", got.SerialNumber, ns, certmanager.IntermediateSecretName, issued.Cert.SerialNumber)
			}
			if err := pki.CheckIntermediate(got, "east", ns); err != nil {
				t.Fatalf("east: renewed intermediate: %v", err)
			}
			if err := got.CheckSignatureFrom(roots.Roots[0]); err != nil {
				t.Fatalf("east: renewed intermediate is not signed by the mesh root: %v", err)
			}
			t.Logf("east: cacerts followed the renewal in %s (serial %s -> %s)", time.Since(asked).Round(time.Millisecond), before.Cert.SerialNumber, got.SerialNumber)
			return
		}
		if time.Since(asked) > followDeadline {
			crt, err := certmanager.Certificate(ctx, east, ns)
			state := "unreadable: " + errString(err)
			if err == nil {
				state = conditions(crt.Status.Conditions)
			}
			t.Fatalf("east: secret %s/%s still holds serial %s %s after the forced renewal; Certificate %s/%s: %s",
				ns, pki.SecretName, before.Cert.SerialNumber, followDeadline, ns, certmanager.IntermediateCertificateName, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// signalHandler logs the hub's records to the test and reports the end
// of the first reconcile (its outcome's message) on seen.
type signalHandler struct {
	t    *testing.T
	seen chan string
	pre  []slog.Attr
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.pre {
		b.WriteString(" " + a.String())
	}
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	h.t.Logf("hub %s %s%s", r.Level, r.Message, b.String())
	switch r.Message {
	case "reconciled", "reconciled with failures", "reconcile failed":
		select {
		case h.seen <- r.Message:
		default:
		}
	}
	return nil
}

func (h *signalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.pre = append(append([]slog.Attr(nil), h.pre...), as...)
	return &c
}

func (h *signalHandler) WithGroup(string) slog.Handler { return h }

func conditions(cs []cmapi.CertificateCondition) string {
	if len(cs) == 0 {
		return "no conditions"
	}
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message))
	}
	return strings.Join(out, ", ")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
