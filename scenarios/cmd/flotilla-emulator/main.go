// Command flotilla-emulator runs the lab's data plane (package
// scenarios/emulator) for every context of a lab kubeconfig, until it is
// interrupted.
//
//	flotilla-emulator --kubeconfig /tmp/flotilla-lab/kubeconfig
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/scenarios/emulator"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-emulator:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the lab's kubeconfig (one context per cluster)")
	contexts := flag.String("contexts", "", "comma-separated contexts (default: all)")
	quiet := flag.Bool("quiet", false, "do not log listener changes and failed calls")
	// The emulator plays Envoy and istio-agent only: certificates and
	// endpoints come from the lab's real istiods. The flag stays for the
	// scripts that give it.
	istiod := flag.Bool("istiod", true, "the lab runs real istiods (flotilla-lab --istio), which the emulator needs: it takes workload certificates and endpoints from them")
	flag.Parse()
	if !*istiod {
		return fmt.Errorf("--istiod=false: the emulator no longer plays istiod; run the lab with real Istio (flotilla-lab --istio)")
	}
	if *kubeconfig == "" {
		return fmt.Errorf("no kubeconfig: give --kubeconfig or set KUBECONFIG")
	}
	raw, err := clientcmd.LoadFromFile(*kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", *kubeconfig, err)
	}
	var names []string
	if *contexts != "" {
		names = strings.Split(*contexts, ",")
	} else {
		for n := range raw.Contexts {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	cfg := emulator.Config{Log: os.Stderr}
	if *quiet {
		cfg.Log = nil
	}
	for _, n := range names {
		rc, err := clientcmd.NewNonInteractiveClientConfig(*raw, n, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
		if err != nil {
			return fmt.Errorf("context %s: %w", n, err)
		}
		cfg.Clusters = append(cfg.Clusters, emulator.Cluster{Name: n, Config: rc})
	}
	e, err := emulator.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	return e.Run(ctx)
}
