package lab

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// certManagerWebhookBinary is cert-manager's admission webhook, built from
// scenarios/certmanager/webhook against the cert-manager module.
const certManagerWebhookBinary = "cert-manager-webhook"

// certManagerWebhookName names the webhook configurations as cert-manager's
// chart does for a release named cert-manager.
const certManagerWebhookName = "cert-manager-webhook"

// startCertManagerWebhook starts cert-manager's webhook on a loopback port
// and registers it with the cluster's API server as the chart registers it
// with `webhook.url.host` set: a mutating webhook for new
// CertificateRequests (it records the requester's identity) and a
// validating one for every cert-manager.io and acme.cert-manager.io
// resource and subresource (validation, and the check that whoever sets
// Approved or Denied may `approve` the signer), failing closed. The API
// server calls the URL directly, or through the cluster network of a
// RealIstio lab, which passes loopback as is.
func (c *Cluster) startCertManagerWebhook(ctx context.Context, run func(name string, args ...string) (*process, error), kubeconfig string) error {
	dir := filepath.Join(c.dir, "cert-manager-webhook")
	caPEM, err := writeWebhookPKI(dir)
	if err != nil {
		return fmt.Errorf("cert-manager webhook certificate: %w", err)
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[0]))
	p, err := run(certManagerWebhookBinary, "--kubeconfig="+kubeconfig, "--listen="+addr, "--cert-dir="+dir, "--v=1")
	if err != nil {
		return err
	}
	base := "https://" + addr
	if err := waitHTTP(ctx, p, base+"/healthz", caPEM, "", time.Minute); err != nil {
		if bindFailure(p.log) {
			return errAddrInUse
		}
		return fmt.Errorf("cert-manager webhook: %w", err)
	}
	timeout := new(int32(30)) // the chart's webhook.timeoutSeconds
	sideEffects := admissionv1.SideEffectClassNone
	fail := admissionv1.Fail
	equivalent := admissionv1.Equivalent
	client := func(path string) admissionv1.WebhookClientConfig {
		url := base + path
		return admissionv1.WebhookClientConfig{URL: &url, CABundle: caPEM}
	}
	meta := metav1.ObjectMeta{Name: certManagerWebhookName, Labels: map[string]string{"app.kubernetes.io/name": "webhook", "app.kubernetes.io/instance": "cert-manager", "app.kubernetes.io/component": "webhook"}}
	reg := c.Client().AdmissionregistrationV1()
	mutating := &admissionv1.MutatingWebhookConfiguration{ObjectMeta: meta, Webhooks: []admissionv1.MutatingWebhook{{
		Name: "webhook.cert-manager.io",
		Rules: []admissionv1.RuleWithOperations{{
			Operations: []admissionv1.OperationType{admissionv1.Create},
			Rule:       admissionv1.Rule{APIGroups: []string{"cert-manager.io"}, APIVersions: []string{"v1"}, Resources: []string{"certificaterequests"}},
		}},
		AdmissionReviewVersions: []string{"v1"},
		MatchPolicy:             &equivalent,
		TimeoutSeconds:          timeout,
		FailurePolicy:           &fail,
		SideEffects:             &sideEffects,
		ClientConfig:            client("/mutate"),
	}}}
	validating := &admissionv1.ValidatingWebhookConfiguration{ObjectMeta: meta, Webhooks: []admissionv1.ValidatingWebhook{{
		Name: "webhook.cert-manager.io",
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "cert-manager.io/disable-validation", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"true"},
		}}},
		Rules: []admissionv1.RuleWithOperations{{
			Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
			Rule:       admissionv1.Rule{APIGroups: []string{"cert-manager.io", "acme.cert-manager.io"}, APIVersions: []string{"v1"}, Resources: []string{"*/*"}},
		}},
		AdmissionReviewVersions: []string{"v1"},
		MatchPolicy:             &equivalent,
		TimeoutSeconds:          timeout,
		FailurePolicy:           &fail,
		SideEffects:             &sideEffects,
		ClientConfig:            client("/validate"),
	}}}
	if _, err := reg.MutatingWebhookConfigurations().Create(ctx, mutating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("MutatingWebhookConfiguration %s: %w", certManagerWebhookName, err)
	}
	if _, err := reg.ValidatingWebhookConfigurations().Create(ctx, validating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("ValidatingWebhookConfiguration %s: %w", certManagerWebhookName, err)
	}
	return nil
}

// writeWebhookPKI writes the webhook's serving certificate (tls.crt,
// tls.key) for 127.0.0.1 and the name of the chart's Service into dir, and
// returns the CA that signed it, the webhook configurations' caBundle: the
// chart's cainjector puts the webhook's own CA there the same way.
func writeWebhookPKI(dir string) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := newTestCA("cert-manager-webhook-ca")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.issue("cert-manager-webhook",
		[]string{"cert-manager-webhook", "cert-manager-webhook.cert-manager", "cert-manager-webhook.cert-manager.svc"},
		[]net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), certPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), keyPEM, 0o600); err != nil {
		return nil, err
	}
	return ca.certPEM, nil
}
