package cli

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
)

// newCSRAgentCommand runs the istio-csr style signer (pki/csragent).
func newCSRAgentCommand(g *globals) *cobra.Command {
	var (
		clusterName, namespace, trustDomain, issuerName, issuerKind string
		bundleFile, certFile, keyFile, listen, metricsListen        string
		istiod                                                      bool
		maxLifetime, signTimeout                                    time.Duration
		rootCertNamespaces, audiences                               []string
	)
	c := &cobra.Command{
		Use:   "csr-agent",
		Short: "Sign Istio workload certificates through cert-manager (istio.v1.auth.IstioCertificateService)",
		Long: `csr-agent serves istio.v1.auth.IstioCertificateService/CreateCertificate over
gRPC with TLS. It checks each caller's service-account token with TokenReview
(audience istio-ca), accepts only a CSR for that account's SPIFFE ID, has
cert-manager sign it through a CertificateRequest, and returns the chain ending
in a root of the pinned trust bundle. Point Istio's global.caAddress at it and set
pilot.env.ENABLE_CA_SERVER to "false"; csragent.Objects holds the manifests
that run it in a cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if clusterName == "" || bundleFile == "" {
				return fmt.Errorf("--cluster-name and --trust-bundle-file are required")
			}
			bundlePEM, err := os.ReadFile(bundleFile)
			if err != nil {
				return fmt.Errorf("trust bundle: %w", err)
			}
			bundle, err := pki.ParseBundle(bundlePEM)
			if err != nil {
				return fmt.Errorf("trust bundle %s: %w", bundleFile, err)
			}
			cfg, err := agentConfig(g.kubeconfig())
			if err != nil {
				return fmt.Errorf("%s: %w", clusterName, err)
			}
			// Each signing makes three API calls: client-side rate limits would cap the agent.
			cfg.QPS, cfg.Burst = -1, 0
			kc, err := kube.Connect(clusterName, cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return csragent.Run(ctx, csragent.Options{
				Cluster:            kc,
				Namespace:          namespace,
				Issuer:             certmanager.IssuerRef{Name: issuerName, Kind: issuerKind},
				TrustBundle:        bundle,
				TrustDomain:        trustDomain,
				Audiences:          audiences,
				MaxLifetime:        maxLifetime,
				SignTimeout:        signTimeout,
				Listen:             listen,
				TLSCertFile:        certFile,
				TLSKeyFile:         keyFile,
				MetricsListen:      metricsListen,
				RootCertNamespaces: rootCertNamespaces,
				Istiod:             istiod,
				Log:                slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil)),
			})
		},
	}
	f := c.Flags()
	f.StringVar(&clusterName, "cluster-name", "", "the cluster this agent signs for (named in errors)")
	f.StringVar(&namespace, "namespace", "istio-system", "control-plane namespace: CertificateRequests and the workload issuer")
	f.StringVar(&trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	f.StringVar(&issuerName, "issuer-name", certmanager.WorkloadIssuer().Name, "cert-manager issuer that signs workload certificates")
	f.StringVar(&issuerKind, "issuer-kind", "Issuer", "Issuer or ClusterIssuer")
	f.StringVar(&bundleFile, "trust-bundle-file", "", "PEM roots every returned chain must end in (pinned)")
	f.StringVar(&certFile, "tls-cert-file", "", "serving certificate (reloaded when it changes)")
	f.StringVar(&keyFile, "tls-key-file", "", "serving key")
	f.StringVar(&listen, "listen", ":6443", "gRPC listen address")
	f.StringVar(&metricsListen, "metrics-listen", ":9402", "metrics listen address (empty: none)")
	f.BoolVar(&istiod, "istiod-cert", false, "keep istiod's serving certificate (Secret istiod-tls) as istio-csr does")
	f.DurationVar(&maxLifetime, "max-lifetime", 0, "cap on a requested certificate lifetime (0: 24h)")
	f.DurationVar(&signTimeout, "sign-timeout", 0, "deadline for cert-manager per request (0: default)")
	f.StringSliceVar(&rootCertNamespaces, "root-cert-namespaces", nil, "namespaces that get the istio-ca-root-cert ConfigMap (empty: all)")
	f.StringSliceVar(&audiences, "audience", nil, "token audiences accepted (default istio-ca)")
	return c
}

// agentConfig is the in-cluster config, or --kubeconfig's for runs outside.
func agentConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if cfg, err := rest.InClusterConfig(); err == nil {
			return cfg, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
}
