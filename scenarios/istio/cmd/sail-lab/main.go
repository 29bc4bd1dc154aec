// Command sail-lab is the lab's Sail Operator: it installs Istio's own Helm
// charts for the Sail Istio, IstioCNI and ZTunnel resources of one cluster (package
// sail), until it is stopped.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/scenarios/istio/sail"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	cluster := flag.String("cluster", "", "cluster name, for logs and errors")
	charts := flag.String("charts", "", "directory of Istio's charts (istio.io/istio manifests/charts)")
	operatorNS := flag.String("operator-namespace", "sail-operator", "namespace of the default revision's base release")
	verbose := flag.Bool("v", false, "log Helm's own progress")
	flag.Parse()
	if *kubeconfig == "" || *charts == "" {
		fmt.Fprintln(os.Stderr, "sail-lab: --kubeconfig and --charts are required")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// Helm's own lines only when asked for: they are many.
	helmLevel := slog.LevelWarn
	if *verbose {
		helmLevel = slog.LevelDebug
	}
	helmLog := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: helmLevel}))
	if err := run(*kubeconfig, *cluster, *charts, *operatorNS, log, helmLog); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		os.Exit(1)
	}
}

func run(kubeconfig, cluster, charts, operatorNS string, log, helmLog *slog.Logger) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &sail.Controller{
		Cluster:           cluster,
		OperatorNamespace: operatorNS,
		Charts:            sail.NewCharts(charts, kubeconfig, helmLog),
		Kube:              kc,
		Dynamic:           dc,
		Log:               log,
	}
	log.Info("sail-lab started", "cluster", cluster, "charts", charts)
	return c.Run(ctx)
}
