package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
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
	istioRecipe = "2"
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

// buildIstio compiles istiod and sail-lab into dir and copies the module's
// charts beside them.
func buildIstio(ctx context.Context, src, dir string, logw io.Writer) error {
	fmt.Fprintf(logw, "lab: building istiod (istio.io/istio %s) and sail-lab (helm %s) (a cold build of istiod takes about 10 minutes)\n", IstioVersion, HelmVersion)
	if err := goBuild(ctx, src, "build", "-trimpath", "-ldflags=-s -w", "-o", dir+"/",
		"istio.io/istio/pilot/cmd/pilot-discovery", "./cmd/sail-lab"); err != nil {
		return err
	}
	// The charts come from the same module version istiod was built from.
	list := exec.CommandContext(ctx, goTool(), "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
	list.Dir, list.Env = src, goBuildEnv()
	modDir, err := list.Output()
	if err != nil {
		return fmt.Errorf("find the istio.io/istio module directory: %w", err)
	}
	charts := filepath.Join(strings.TrimSpace(string(modDir)), "manifests", "charts")
	if err := os.CopyFS(filepath.Join(dir, istioChartsDir), os.DirFS(charts)); err != nil {
		return fmt.Errorf("copy Istio's charts from %s: %w", charts, err)
	}
	return nil
}
