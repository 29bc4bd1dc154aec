// Command cert-manager-webhook runs cert-manager's own admission webhook,
// built from the github.com/cert-manager/cert-manager module, out of
// cluster on a loopback address: the admission chain upstream's webhook
// binary serves (the requester identity on CertificateRequests, the
// approval check that whoever sets Approved or Denied may `approve` the
// signer, and every resource's validation), assembled by upstream's
// internal/webhook. Only the listener is the lab's: upstream's server binds
// every interface, the lab binds one loopback address and serves the
// certificate it is given.
//
// The internal packages are importable because this module's path lies
// under github.com/cert-manager/cert-manager, as the path of upstream's own
// webhook binary module (github.com/cert-manager/cert-manager/webhook-binary) does.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	config "github.com/cert-manager/cert-manager/internal/apis/config/webhook"
	cmwebhook "github.com/cert-manager/cert-manager/internal/webhook"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	cmadmission "github.com/cert-manager/cert-manager/pkg/webhook/admission"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

func main() {
	// A flag set of its own: controller-runtime registers --kubeconfig on
	// the global one.
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster (for SubjectAccessReviews and discovery)")
	listen := fs.String("listen", "127.0.0.1:10250", "loopback host:port to serve /validate and /mutate on")
	certDir := fs.String("cert-dir", "", "directory holding the serving certificate tls.crt and its key tls.key")
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(*kubeconfig, *listen, *certDir); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, listen, certDir string) error {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen=%s: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen=%s: not a loopback address", listen)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("--listen=%s: %w", listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := klog.Background()
	ctx = logf.NewContext(ctx, log, "cert-manager-webhook")

	// Upstream's assembly of the webhook (scheme, admission chain), its
	// server's listener left unused.
	srv, err := cmwebhook.NewCertManagerWebhookServer(log, config.WebhookConfiguration{KubeConfig: kubeconfig})
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	ws := webhook.NewServer(webhook.Options{
		Host: host, Port: port,
		CertDir: certDir, CertName: "tls.crt", KeyName: "tls.key",
	})
	ws.Register("/mutate", cmadmission.NewCustomMutationWebhook(srv.MutationWebhook))
	ws.Register("/validate", cmadmission.NewCustomValidationWebhook(srv.ResourceScheme, srv.ValidationWebhook))
	ws.Register("/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	klog.InfoS("serving cert-manager's webhook", "address", listen, "certificate", filepath.Join(certDir, "tls.crt"))
	return ws.Start(ctx)
}
