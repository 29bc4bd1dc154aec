package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Versions of Istio's parts the lab runs when Options.RealIstio is set, built
// from scenarios/istio (its own module: istio.io/istio brings Kubernetes and
// gRPC versions of its own). TestIstioVersionsMatchGoMod keeps them in step.
const (
	IstioVersion = "v0.0.0-20260827124520-eed52ebb66ad"
	HelmVersion  = "v4.2.4"
	// istioRecipe changes when the set of Istio binaries, their build
	// flags or the layout of the cache entry change, and when sail-lab's
	// own code (scenarios/istio/sail, cmd/sail-lab) changes: the key holds
	// no hash of it.
	istioRecipe = "1"
)

// Istio's parts in their cache entry: istiod, the lab's Sail Operator and
// Istio's Helm charts copied from the module.
const (
	pilotDiscoveryBinary = "pilot-discovery"
	sailLabBinary        = "sail-lab"
	istioChartsDir       = "charts"
)

// IstioCacheKey names the cache directory of one build of Istio's parts. It
// is apart from CacheKey's so that labs without RealIstio never build istiod.
func IstioCacheKey() string {
	return fmt.Sprintf("istio-%s_helm-%s_%s-%s_r%s", IstioVersion, HelmVersion, runtime.GOOS, runtime.GOARCH, istioRecipe)
}

// EnsureIstioBinaries returns the directory holding pilot-discovery, sail-lab
// and charts/, building them first when the cache lacks them (a cold build
// of istiod takes several minutes). Concurrent callers wait for one build.
func EnsureIstioBinaries(ctx context.Context, o BuildOptions) (string, error) {
	return ensureCached(ctx, o, cacheEntry{
		key: IstioCacheKey(), what: "Istio binaries", module: "scenarios/istio",
		complete: istioComplete,
		// scenarios/istio sits beside scenarios/upstream.
		source: func(upstream string) string { return filepath.Join(filepath.Dir(upstream), "istio") },
		build:  buildIstio,
	})
}

func istioComplete(dir string) bool {
	for _, n := range []string{pilotDiscoveryBinary, sailLabBinary, filepath.Join(istioChartsDir, "base", "Chart.yaml")} {
		if !fileExists(filepath.Join(dir, n)) {
			return false
		}
	}
	return true
}

// buildIstio compiles istiod and sail-lab and copies the module's charts
// into a temporary directory, then renames it into place.
func buildIstio(ctx context.Context, src, dir string, logw io.Writer) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-istio-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	fmt.Fprintf(logw, "lab: building istiod (istio.io/istio %s) and sail-lab (helm %s) into %s (a cold build of istiod takes about 10 minutes)\n", IstioVersion, HelmVersion, dir)
	env := append(os.Environ(), "GOFLAGS=-mod=readonly", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", tmp+"/",
		"istio.io/istio/pilot/cmd/pilot-discovery", "./cmd/sail-lab")
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = src, env, &out, &out
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(logw, "lab: still building istiod (%s)\n", time.Since(start).Round(time.Second))
			}
		}
	}()
	err = cmd.Run()
	close(stop)
	if err != nil {
		return fmt.Errorf("Istio binaries missing in %s and building them failed: %s", dir, buildFailure(out.String(), err))
	}
	// The charts come from the same module version istiod was built from.
	list := exec.CommandContext(ctx, goTool(), "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
	list.Dir, list.Env = src, env
	modDir, err := list.Output()
	if err != nil {
		return fmt.Errorf("find the istio.io/istio module directory: %w", err)
	}
	charts := filepath.Join(strings.TrimSpace(string(modDir)), "manifests", "charts")
	if err := os.CopyFS(filepath.Join(tmp, istioChartsDir), os.DirFS(charts)); err != nil {
		return fmt.Errorf("copy Istio's charts from %s: %w", charts, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	fmt.Fprintf(logw, "lab: built Istio's parts in %s\n", time.Since(start).Round(time.Second))
	return nil
}
