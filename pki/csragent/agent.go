// Package csragent is flotilla's signer in the style of cert-manager's
// istio-csr: a gRPC server over TLS implementing
// istio.v1.auth.IstioCertificateService/CreateCertificate for istiod and
// the proxies (global.caAddress), with istiod's own CA turned off. Each
// call is authenticated with TokenReview, authorised against the SPIFFE ID
// of the token's service account, and signed by cert-manager through a
// CertificateRequest against the cluster's workload issuer. The chain it
// returns ends in a root of a pinned trust bundle, never in whatever the
// issuer calls its CA. The manifests that run it in a cluster, and the
// flags they pass, live beside it (manifests.go).
//
// cert-manager's approver controller approves every CertificateRequest
// when its webhook (which records the requester) is absent, so this agent
// is the policy point: nothing reaches cert-manager that it did not check.
//
// `flotilla csr-agent` maps its flags onto Options (Args in manifests.go
// passes the first group):
//
//	--cluster-name NAME          kube.Connect(NAME, in-cluster or --kubeconfig config; QPS -1)
//	--namespace NS               Namespace
//	--trust-domain TD            TrustDomain
//	--issuer-name, --issuer-kind Issuer
//	--trust-bundle-file PATH     TrustBundle (pki.ParseBundle of the file)
//	--tls-cert-file, --tls-key-file  TLSCertFile, TLSKeyFile
//	--listen ADDR                Listen (":6443")
//	--metrics-listen ADDR        MetricsListen (":9402")
//	--istiod-cert                Istiod
//	--max-lifetime DURATION      MaxLifetime
//	--root-cert-namespaces A,B   RootCertNamespaces
//	--audience AUD (repeatable)  Audiences
//	--sign-timeout DURATION      SignTimeout
//	--kubeconfig PATH            out-of-cluster runs only
package csragent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
)

// Defaults of Options.
const (
	DefaultAudience      = "istio-ca"
	DefaultTrustDomain   = "cluster.local"
	DefaultPort          = 6443
	DefaultServicePort   = 443
	DefaultMetricsPort   = 9402
	DefaultMaxLifetime   = pki.DefaultWorkloadMaxTTL
	DefaultSignTimeout   = 10 * time.Second
	DefaultMaxCSRBytes   = 8 << 10
	RootCertConfigMap    = "istio-ca-root-cert"
	RootCertKey          = "root-cert.pem"
	IstiodCertificate    = "istiod"
	IstiodSecret         = "istiod-tls"
	requestLabel         = "flotilla.dev/csr-agent"
	identityAnnotation   = "flotilla.dev/identity"
	maxMessageBytes      = 64 << 10
	defaultIstiodTTL     = 24 * time.Hour
	defaultRootCertSync  = 5 * time.Minute
	defaultSecretTimeout = 2 * time.Minute
)

// Options configure the agent. Cluster, TrustBundle and a serving
// certificate (TLS or TLSCertFile/TLSKeyFile) are required.
type Options struct {
	// Cluster is the connection the agent reviews tokens and creates
	// CertificateRequests through.
	Cluster *kube.Cluster
	// Namespace holds the CertificateRequests and the workload Issuer: the
	// control-plane namespace.
	Namespace string
	// Issuer signs workload certificates; zero is certmanager.WorkloadIssuer.
	Issuer certmanager.IssuerRef
	// TrustBundle is the pinned set of roots: every returned chain must
	// verify to one of them, and it ends with that root.
	TrustBundle *pki.Bundle
	// TrustDomain of the SPIFFE IDs issued; "" is cluster.local.
	TrustDomain string
	// Audiences a token must carry; empty is [istio-ca].
	Audiences []string
	// MaxLifetime caps validity_duration; a request above it is refused.
	// 0 is DefaultMaxLifetime. A request without one gets MaxLifetime.
	MaxLifetime time.Duration
	// SignTimeout bounds the wait for cert-manager per request; 0 is
	// DefaultSignTimeout.
	SignTimeout time.Duration
	// MaxCSRBytes bounds the PEM CSR; 0 is DefaultMaxCSRBytes.
	MaxCSRBytes int
	// Limits bound TokenReviews and CertificateRequests per caller and
	// overall; zero fields are DefaultLimits'.
	Limits Limits

	// Listen is the gRPC address (":6443").
	Listen string
	// TLS is the serving configuration; when nil, TLSCertFile and
	// TLSKeyFile are read, and read again when they change (cert-manager
	// renews the agent's own certificate under it).
	TLS                     *tls.Config
	TLSCertFile, TLSKeyFile string
	// MetricsListen serves /metrics when not empty.
	MetricsListen string
	// Registerer takes the agent's metrics; nil is a private registry
	// (served on MetricsListen).
	Registerer prometheus.Registerer

	// RootCertNamespaces get the istio-ca-root-cert ConfigMap; empty means
	// every namespace (istiod's own behaviour).
	RootCertNamespaces []string
	// Istiod makes the agent keep a Certificate for istiod's serving
	// certificate (Secret istiod-tls in Namespace), as istio-csr does.
	Istiod bool

	// Log receives operational lines; nil discards them. Tokens, CSRs and
	// keys never reach it.
	Log *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Cluster == nil {
		return o, errors.New("csr-agent: no cluster connection")
	}
	if o.Namespace == "" {
		return o, fmt.Errorf("%s: csr-agent: no namespace", o.Cluster.Name)
	}
	if o.TrustBundle == nil || len(o.TrustBundle.Roots) == 0 {
		return o, fmt.Errorf("%s: csr-agent: no pinned trust bundle", o.Cluster.Name)
	}
	if o.Issuer.Name == "" {
		o.Issuer = certmanager.WorkloadIssuer()
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if err := (pki.SPIFFEID{TrustDomain: o.TrustDomain, Namespace: "x", ServiceAccount: "x"}).Validate(); err != nil {
		return o, fmt.Errorf("%s: csr-agent: %w", o.Cluster.Name, err)
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{DefaultAudience}
	}
	if o.MaxLifetime <= 0 {
		o.MaxLifetime = DefaultMaxLifetime
	}
	if o.SignTimeout <= 0 {
		o.SignTimeout = DefaultSignTimeout
	}
	if o.MaxCSRBytes <= 0 {
		o.MaxCSRBytes = DefaultMaxCSRBytes
	}
	o.Limits = o.Limits.withDefaults()
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// IstioValues are the Istio values of this mode, for deploy.Options.Values:
// proxies and istiod get their certificates from the agent's Service in
// namespace, and istiod's own CA is off.
func IstioValues(namespace string) map[string]any {
	return map[string]any{
		"global": map[string]any{"caAddress": Address(namespace)},
		"pilot":  map[string]any{"env": map[string]any{"ENABLE_CA_SERVER": "false"}},
	}
}

// ServiceName is the agent's Service, in the control-plane namespace.
const ServiceName = "flotilla-csr-agent"

// Address is the agent's in-cluster gRPC address.
func Address(namespace string) string {
	return fmt.Sprintf("%s.%s.svc:%d", ServiceName, namespace, DefaultServicePort)
}
