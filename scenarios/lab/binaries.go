package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Versions the lab builds. The binary cache is keyed by them; the upstream
// module's go.mod must agree (TestUpstreamVersionsMatchGoMod checks).
const (
	KubernetesVersion = "v1.36.3"
	EtcdVersion       = "v3.6.8"
	KwokVersion       = "v0.8.0"
	// CertManagerVersion is the cert-manager module scenarios/certmanager builds.
	CertManagerVersion = "v1.21.2"
	// buildRecipe changes when the set of binaries, their build flags or the
	// flags of a main the lab builds (scenarios/certmanager) change.
	buildRecipe = "5"
)

// Binaries the lab runs, built from scenarios/upstream, and cert-manager's
// controllers and webhook from scenarios/certmanager (its own module:
// cert-manager's dependencies stay out of the upstream module's graph).
var binaryNames = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", certManagerBinary, certManagerWebhookBinary}

// stagesFile holds kwok's stages, printed once at build time by kwok-stages.
const stagesFile = "kwok-stages.yaml"

// CacheKey names the cache directory of one set of lab binaries.
func CacheKey() string {
	return fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s_%s-%s_r%s", KubernetesVersion, EtcdVersion, KwokVersion, runtime.GOOS, runtime.GOARCH, buildRecipe)
}

// DefaultCacheDir is $FLOTILLA_LAB_CACHE, else the user cache dir's flotilla-lab.
func DefaultCacheDir() string {
	if d := os.Getenv("FLOTILLA_LAB_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "flotilla-lab")
	}
	return filepath.Join(os.TempDir(), "flotilla-lab-cache")
}

// BuildOptions say where lab binaries are cached and built from.
type BuildOptions struct {
	// CacheDir holds one directory per CacheKey; "" is DefaultCacheDir.
	CacheDir string
	// SourceDir is the scenarios/upstream module; "" finds it from the
	// working directory or $FLOTILLA_LAB_SOURCE.
	SourceDir string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// EnsureBinaries returns the directory of the lab binaries, building them
// first when the cache lacks them. Concurrent callers (parallel test
// packages) wait for one build instead of racing.
func EnsureBinaries(ctx context.Context, o BuildOptions) (string, error) {
	return ensureCached(ctx, o, cacheEntry{
		key: CacheKey(), what: "lab binaries", module: "scenarios/upstream",
		complete: complete,
		source:   func(upstream string) string { return upstream },
		build:    build,
	})
}

// cacheEntry is one directory of built parts in the lab's binary cache.
type cacheEntry struct {
	key, what, module string
	complete          func(dir string) bool
	// source maps the scenarios/upstream module's directory to the
	// directory of the module that builds this entry.
	source func(upstream string) string
	// build fills dir (a temporary directory) from the module in src.
	build func(ctx context.Context, src, dir string, logw io.Writer) error
}

// ensureCached returns e's directory, building it first under a file lock
// when it is not complete, so that concurrent callers wait for one build.
func ensureCached(ctx context.Context, o BuildOptions, e cacheEntry) (string, error) {
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	dir := filepath.Join(o.CacheDir, e.key)
	if e.complete(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("lab binary cache %s: %w", o.CacheDir, err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("lab binary cache %s: %w", o.CacheDir, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(logw, "lab: waiting for another process building %s\n", dir)
		if err := flockCtx(ctx, lock); err != nil {
			return "", err
		}
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if e.complete(dir) {
		return dir, nil
	}
	src := o.SourceDir
	if src == "" {
		src = findUpstreamSource()
	}
	if src != "" {
		src = e.source(src)
	}
	if src == "" || !fileExists(filepath.Join(src, "go.mod")) {
		return "", fmt.Errorf("%s missing in %s, and the module that builds them (%s) was not found: run from the flotilla checkout or set FLOTILLA_LAB_SOURCE", e.what, dir, e.module)
	}
	// Built into a temporary directory and renamed into place, so an
	// interrupted build never leaves a half-filled cache entry.
	tmp, err := os.MkdirTemp(o.CacheDir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(logw, "lab: still building %s (%s)\n", e.what, time.Since(start).Round(time.Second))
			}
		}
	}()
	err = e.build(ctx, src, tmp, logw)
	close(stop)
	if err != nil {
		return "", fmt.Errorf("%s missing in %s and building them failed: %w", e.what, dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	fmt.Fprintf(logw, "lab: built %s in %s\n", e.what, time.Since(start).Round(time.Second))
	return dir, nil
}

func complete(dir string) bool {
	for _, n := range append([]string{stagesFile}, binaryNames...) {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	return true
}

func flockCtx(ctx context.Context, f *os.File) error {
	done := make(chan error, 1)
	go func() { done <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the lab binary build lock: %w", ctx.Err())
	}
}

// build compiles every lab binary into dir and writes kwok's stages.
func build(ctx context.Context, src, dir string, logw io.Writer) error {
	fmt.Fprintf(logw, "lab: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (kubernetes %s), etcd %s, kwok %s and cert-manager %s controllers and webhook (a cold build takes several minutes)\n",
		KubernetesVersion, EtcdVersion, KwokVersion, CertManagerVersion)
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/",
		"./cmd/etcd", "./cmd/kwok-stages",
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler",
		"k8s.io/kubernetes/cmd/kubectl",
		"sigs.k8s.io/kwok/cmd/kwok",
	}
	if err := goBuild(ctx, src, args...); err != nil {
		return err
	}
	// Same flags and environment, so the build cache serves both.
	cm := filepath.Join(filepath.Dir(src), "certmanager")
	if err := goBuild(ctx, cm, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, certManagerBinary), "."); err != nil {
		return err
	}
	if err := goBuild(ctx, cm, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, certManagerWebhookBinary), "./webhook"); err != nil {
		return err
	}
	stages, err := exec.CommandContext(ctx, filepath.Join(dir, "kwok-stages")).Output()
	if err != nil {
		return fmt.Errorf("print kwok stages: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, stagesFile), stages, 0o644)
}

// goBuildEnv is the environment of every lab build: module versions as
// go.mod says, static binaries.
func goBuildEnv() []string {
	return append(os.Environ(), "GOFLAGS=-mod=readonly", "CGO_ENABLED=0")
}

// goBuild runs the go command in dir; a failure says why in one line.
func goBuild(ctx context.Context, dir string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, goBuildEnv(), &out, &out
	if err := cmd.Run(); err != nil {
		return errors.New(buildFailure(out.String(), err))
	}
	return nil
}

// buildFailure reduces go's output to the one line that says why.
func buildFailure(out string, err error) string {
	var first string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "go: downloading") {
			continue
		}
		low := strings.ToLower(l)
		for _, s := range []string{"proxy", "dial tcp", "module lookup disabled", "403", "404", "no such host", "connection refused", "missing go.sum", "i/o timeout"} {
			if strings.Contains(low, s) {
				return "cannot get Go modules (is the Go module proxy reachable?): " + l
			}
		}
		if first == "" {
			first = l
		}
	}
	if first == "" {
		first = err.Error()
	}
	return first
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// findUpstreamSource looks for scenarios/upstream from $FLOTILLA_LAB_SOURCE,
// then upwards from the working directory and from the running executable.
func findUpstreamSource() string {
	if d := os.Getenv("FLOTILLA_LAB_SOURCE"); d != "" {
		return d
	}
	root := RepoRoot()
	if root == "" {
		return ""
	}
	return filepath.Join(root, "scenarios", "upstream")
}

// RepoRoot finds the flotilla checkout from the working directory or the
// running executable; "" when neither is inside one.
func RepoRoot() string {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			if fileExists(filepath.Join(d, "scenarios", "upstream", "go.mod")) {
				return d
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return ""
}

// FindCRDDir returns $FLOTILLA_CRDS, else shared/crds beside the checkout.
func FindCRDDir() (string, error) {
	if d := os.Getenv("FLOTILLA_CRDS"); d != "" {
		return d, nil
	}
	if root := RepoRoot(); root != "" {
		for _, d := range []string{filepath.Join(root, "..", "shared", "crds"), filepath.Join(root, "shared", "crds")} {
			if fileExists(d) {
				return filepath.Clean(d), nil
			}
		}
	}
	return "", errors.New("CRDs not found: set FLOTILLA_CRDS, or run from the flotilla checkout with shared/crds beside it")
}
