// Command flotilla-lab starts and stops local lab clusters: real
// kube-apiservers on loopback, built from the upstream Go modules.
//
//	flotilla-lab up east west   # start clusters, return when ready
//	flotilla-lab env            # print the KUBECONFIG to export
//	flotilla-lab down           # stop everything, remove data
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-lab: "+err.Error())
		os.Exit(1)
	}
}

func defaultDir() string {
	if d := os.Getenv("FLOTILLA_LAB_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "flotilla-lab")
}

func newRoot() *cobra.Command {
	var dir string
	root := &cobra.Command{
		Use:           "flotilla-lab",
		Short:         "Local lab of real Kubernetes API servers on loopback",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&dir, "dir", defaultDir(), "lab directory (data, logs, kubeconfig); $FLOTILLA_LAB_DIR")
	root.AddCommand(
		upCmd(&dir),
		&cobra.Command{
			Use:   "down",
			Short: "Stop every process the lab started and remove its data",
			Args:  cobra.NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return down(dir) },
		},
		&cobra.Command{
			Use:   "env",
			Short: "Print the KUBECONFIG to export for the running lab",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				st, err := readState(dir)
				if err != nil {
					return err
				}
				fmt.Printf("export KUBECONFIG=%s\n", st.Kubeconfig)
				return nil
			},
		},
		&cobra.Command{
			Use:   "status",
			Short: "List the running lab's clusters",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				st, err := readState(dir)
				if err != nil {
					return err
				}
				fmt.Printf("%-12s %-28s %-16s %s\n", "CLUSTER", "SERVER", "PODS", "LOADBALANCERS")
				for _, c := range st.Clusters {
					fmt.Printf("%-12s %-28s %-16s %s\n", c.Name, c.Server, c.PodCIDR, c.LoadBalancerCIDR)
				}
				return nil
			},
		},
		buildCommand(),
		superviseCmd(&dir),
	)
	return root
}

func buildCommand() *cobra.Command {
	var istio bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or find cached) the lab binaries and print their directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := lab.EnsureBinaries(cmd.Context(), lab.BuildOptions{Log: os.Stderr})
			if err != nil {
				return err
			}
			fmt.Println(d)
			if istio {
				if d, err = lab.EnsureIstioBinaries(cmd.Context(), lab.BuildOptions{Log: os.Stderr}); err != nil {
					return err
				}
				fmt.Println(d)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&istio, "istio", false, "also build Istio's parts (istiod, sail-lab, charts) for labs with real Istio")
	return cmd
}

// state is what a running lab publishes in its directory.
type state struct {
	PID        int            `json:"pid"`
	Kubeconfig string         `json:"kubeconfig"`
	Clusters   []stateCluster `json:"clusters"`
	PIDs       map[string]int `json:"pids"`
}

type stateCluster struct {
	Name             string `json:"name"`
	Server           string `json:"server"`
	PodCIDR          string `json:"podCIDR"`
	LoadBalancerCIDR string `json:"loadBalancerCIDR"`
}

const (
	stateFile = "state.json"
	errorFile = "error.txt"
	logFile   = "supervisor.log"
)

func readState(dir string) (*state, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("no lab running in %s (flotilla-lab up NAME...)", dir)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if !alive(st.PID) {
		return nil, fmt.Errorf("the lab in %s is not running (pid %d gone); run flotilla-lab down to clean up", dir, st.PID)
	}
	return &st, nil
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// up checks everything it can in the foreground (names, dir, binaries),
// then starts a detached supervisor that owns the clusters, and waits until
// it reports ready or failed.
// upCmd is `up`; --cert-manager runs cert-manager's own controllers
// against every cluster, so that cert-manager mode can be tried in the lab,
// --without-approver leaves out its default approver (approval by policy,
// flotilla's), --webhook adds its admission webhook (approvals need
// `approve` on the signer); --istio runs Istio itself (its charts as the
// Sail Operator installs them, a real istiod per istiod pod).
func upCmd(dir *string) *cobra.Command {
	var cm labFlags
	c := &cobra.Command{
		Use:   "up NAME...",
		Short: "Start one isolated cluster per name and return when all are ready",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return up(cmd.Context(), *dir, args, cm)
		},
	}
	c.Flags().BoolVar(&cm.on, "cert-manager", false, "run cert-manager's controllers (issuers, approver, CA signer, Certificate lifecycle) against each cluster")
	c.Flags().BoolVar(&cm.withoutApprover, "without-approver", false, "with --cert-manager: leave out cert-manager's default approver, so that requests wait for an explicit approval (flotilla approves its own)")
	c.Flags().BoolVar(&cm.webhook, "webhook", false, "with --cert-manager: run cert-manager's admission webhook too, registered as its chart registers it (validation; approving needs `approve` on the signer)")
	c.Flags().BoolVar(&cm.istio, "istio", false, "run Istio itself: Istio's charts installed as the Sail Operator does, a real istiod for every istiod pod, injection through istiod's webhook (builds istiod on first use); run flotilla-emulator with --istiod beside it")
	return c
}

// labFlags are up's and supervise's flags for what runs beside the clusters.
type labFlags struct{ on, withoutApprover, webhook, istio bool }

func (f labFlags) args() []string {
	var out []string
	if f.istio {
		out = append(out, "--istio")
	}
	if f.on {
		out = append(out, "--cert-manager")
	}
	if f.withoutApprover {
		out = append(out, "--without-approver")
	}
	if f.webhook {
		out = append(out, "--webhook")
	}
	return out
}

func superviseCmd(dir *string) *cobra.Command {
	var cm labFlags
	c := &cobra.Command{
		Use:    "supervise NAME...",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE:   func(cmd *cobra.Command, args []string) error { return supervise(*dir, args, cm) },
	}
	c.Flags().BoolVar(&cm.on, "cert-manager", false, "")
	c.Flags().BoolVar(&cm.withoutApprover, "without-approver", false, "")
	c.Flags().BoolVar(&cm.webhook, "webhook", false, "")
	c.Flags().BoolVar(&cm.istio, "istio", false, "")
	return c
}

func up(ctx context.Context, dir string, names []string, cm labFlags) error {
	if cm.withoutApprover && !cm.on {
		return errors.New("--without-approver needs --cert-manager")
	}
	if cm.webhook && !cm.on {
		return errors.New("--webhook needs --cert-manager")
	}
	if err := lab.ValidateNames(names); err != nil {
		return err
	}
	if pid := labPID(dir); alive(pid) {
		return fmt.Errorf("lab dir %s is in use by a running lab (pid %d): stop it first (flotilla-lab down)", dir, pid)
	}
	if _, err := lab.FindCRDDir(); err != nil {
		return err
	}
	if _, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: os.Stderr}); err != nil {
		return err
	}
	// Built here, in front of the user, not in the supervisor's log.
	if cm.istio {
		if _, err := lab.EnsureIstioBinaries(ctx, lab.BuildOptions{Log: os.Stderr}); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []string{stateFile, errorFile} {
		os.Remove(filepath.Join(dir, f))
	}
	logf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"supervise", "--dir", dir}, cm.args()...)
	cmd := exec.Command(exe, append(args, names...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start lab supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	start := time.Now()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if st, err := readState(dir); err == nil {
			fmt.Fprintf(os.Stderr, "flotilla-lab: %s ready in %s\n", strings.Join(names, ", "), time.Since(start).Round(100*time.Millisecond))
			fmt.Printf("export KUBECONFIG=%s\n", st.Kubeconfig)
			return nil
		}
		select {
		case <-exited:
			msg, _ := os.ReadFile(filepath.Join(dir, errorFile))
			if len(msg) == 0 {
				msg = []byte("the lab supervisor exited; see " + filepath.Join(dir, logFile))
			}
			return errors.New(strings.TrimSpace(string(msg)))
		case <-tick.C:
			fmt.Fprintf(os.Stderr, "flotilla-lab: starting %s (%s)\n", strings.Join(names, ", "), time.Since(start).Round(time.Second))
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func labPID(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, "lab.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// supervise runs in the background for the lab's lifetime.
func supervise(dir string, names []string, cm labFlags) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Clusters: names, Dir: dir, Log: os.Stderr, CertManager: cm.on, CertManagerWithoutApprover: cm.withoutApprover, CertManagerWebhook: cm.webhook, RealIstio: cm.istio})
	if err != nil {
		_ = os.WriteFile(filepath.Join(dir, errorFile), []byte(err.Error()+"\n"), 0o600)
		return err
	}
	st := state{PID: os.Getpid(), Kubeconfig: l.Kubeconfig, PIDs: l.PIDs()}
	for _, c := range l.Clusters() {
		st.Clusters = append(st.Clusters, stateCluster{Name: c.Name, Server: c.Server, PodCIDR: c.PodCIDR, LoadBalancerCIDR: c.LoadBalancerCIDR})
	}
	data, _ := json.MarshalIndent(st, "", "  ")
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		err = os.Rename(tmp, filepath.Join(dir, stateFile))
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "flotilla-lab: stopping")
	return l.Stop()
}

// down asks the supervisor to stop the lab and waits; if it does not go,
// it kills the supervisor and every component's process group itself.
func down(dir string) error {
	pid := labPID(dir)
	if !alive(pid) {
		var st state
		if data, err := os.ReadFile(filepath.Join(dir, stateFile)); err == nil && json.Unmarshal(data, &st) == nil {
			killGroups(st.PIDs)
		}
		if _, err := os.Stat(dir); err == nil {
			os.RemoveAll(dir)
			fmt.Fprintf(os.Stderr, "flotilla-lab: no lab running in %s; removed its leftovers\n", dir)
		} else {
			fmt.Fprintf(os.Stderr, "flotilla-lab: no lab running in %s\n", dir)
		}
		return nil
	}
	var st state
	if data, err := os.ReadFile(filepath.Join(dir, stateFile)); err == nil {
		_ = json.Unmarshal(data, &st)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(60 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	killGroups(st.PIDs)
	os.RemoveAll(dir)
	fmt.Fprintf(os.Stderr, "flotilla-lab: stopped the lab in %s\n", dir)
	return nil
}

func killGroups(pids map[string]int) {
	for _, p := range pids {
		if p > 0 {
			_ = syscall.Kill(-p, syscall.SIGKILL)
		}
	}
}
