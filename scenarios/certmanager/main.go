// Command cert-manager-controllers runs cert-manager's own controllers,
// built from the github.com/cert-manager/cert-manager module, against one
// cluster: the Issuer and ClusterIssuer controllers with the CA and
// selfSigned issuer implementations, the CertificateRequest approver and
// CA/selfSigned signers, and the Certificate lifecycle (trigger, key
// manager, request manager, issuing, readiness, revision manager). The
// module ships no controller binary (its app package is not part of it),
// so this main does the wiring cmd/controller does upstream, for the
// controllers the lab needs. cert-manager's webhook is a binary of its own
// (./webhook), which a lab runs only when asked (lab.Options.CertManagerWebhook);
// without it nothing defaults or validates the objects beyond the CRD
// schemas.
//
// The module's path lies under github.com/cert-manager/cert-manager so
// that ./webhook may import upstream's internal packages, as upstream's own
// binary modules (github.com/cert-manager/cert-manager/webhook-binary) do.
package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"k8s.io/klog/v2"

	// Each package registers its controller (or issuer implementation) in init.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// defaultControllers are the ones started unless --controllers says
// otherwise, by their registered names; upstream's default list lives in
// an internal package of the controller binary.
var defaultControllers = []string{
	"issuers", "clusterissuers",
	"certificaterequests-approver", "certificaterequests-issuer-ca", "certificaterequests-issuer-selfsigned",
	"certificates-trigger", "certificates-key-manager", "certificates-request-manager",
	"certificates-issuing", "certificates-readiness", "certificates-revision-manager",
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the Secrets ClusterIssuers refer to")
	workers := flag.Int("workers", 5, "workers per controller")
	selection := flag.String("controllers", "*", "controllers to run, as upstream's flag: '*' is the default set, 'name' adds one, '-name' removes one (e.g. '*,-certificaterequests-approver')")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	controllers, err := selectControllers(*selection)
	if err == nil {
		err = run(controllers, *kubeconfig, *clusterNS, *workers)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

// selectControllers reads --controllers the way upstream's controller
// binary does, over the lab's default set.
func selectControllers(flagValue string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(flagValue, ",") {
		switch name, remove := strings.CutPrefix(strings.TrimSpace(item), "-"); {
		case name == "":
		case name == "*" && !remove:
			for _, d := range defaultControllers {
				if !slices.Contains(out, d) {
					out = append(out, d)
				}
			}
		case remove:
			if !slices.Contains(defaultControllers, name) {
				return nil, fmt.Errorf("--controllers: %q is not one of the default controllers %s", name, strings.Join(defaultControllers, ", "))
			}
			out = slices.DeleteFunc(out, func(c string) bool { return c == name })
		case !slices.Contains(out, name):
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--controllers=%q selects no controller", flagValue)
	}
	return out, nil
}

func run(controllers []string, kubeconfig, clusterNS string, workers int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager")
	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: clusterNS},
		CertificateOptions: controller.CertificateOptions{
			// Upstream's defaults (1h, 32h) would stall a lab for an hour
			// after one failed request.
			CertificateRequestMinimumBackoffDuration: 5 * time.Second,
			CertificateRequestMaximumBackoffDuration: time.Minute,
		},
	})
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	known := controller.Known()
	var run []func()
	for _, name := range controllers {
		fn, ok := known[name]
		if !ok {
			return fmt.Errorf("controller %s is not registered (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		c, err := fn(factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		run = append(run, func() {
			if err := c.Run(workers, ctx); err != nil {
				klog.ErrorS(err, "controller stopped", "controller", name)
			}
		})
	}
	// Informers are started only after every controller registered its own.
	cctx, err := factory.Build()
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	cctx.KubeSharedInformerFactory.Start(ctx.Done())
	cctx.SharedInformerFactory.Start(ctx.Done())
	cctx.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	if cctx.GatewaySolverEnabled {
		cctx.GWShared.Start(ctx.Done())
	}
	klog.InfoS("starting controllers", "controllers", controllers)
	var wg sync.WaitGroup
	for _, r := range run {
		wg.Go(r)
	}
	wg.Wait()
	return nil
}
