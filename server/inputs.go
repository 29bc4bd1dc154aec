package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
)

// InputPolicy bounds what a spec may make the hub read and trust. The CLI
// on a user's own state trusts the user's files; a hub serving an API does
// not trust its callers with its own files and rights.
type InputPolicy struct {
	// InsecureSkipTLSVerify accepts kubeconfigs that skip TLS verification
	// (insecure-skip-tls-verify). Without it they are refused: flotilla
	// sends intermediate keys and reader tokens over these connections.
	InsecureSkipTLSVerify bool
	// Confined makes files a spec names (pki.root.certFile and keyFile, a
	// cluster's kubeconfig) admissible only under AllowPaths, and
	// kubeconfigs with exec credential plugins only with AllowExecPlugins.
	// The hub's own kubeconfig (a cluster naming none) stays admissible.
	Confined         bool
	AllowPaths       []string
	AllowExecPlugins bool
	// Warnings receives what is allowed but dangerous; nil is stderr.
	Warnings io.Writer
}

// ErrInputRefused marks a spec or kubeconfig the hub's input policy refuses.
var ErrInputRefused = errors.New("refused by the hub's input policy")

// admitSpec checks the files m names against the policy, before anything is
// read from them.
func (p InputPolicy) admitSpec(m *spec.Mesh) error {
	if m == nil || !p.Confined {
		return nil
	}
	var errs []error
	check := func(field, path string) {
		if path == "" {
			return
		}
		if err := p.allowedPath(path); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", field, path, err))
		}
	}
	if r := m.Spec.PKI.Root; r != nil {
		check("spec.pki.root.certFile", r.CertFile)
		check("spec.pki.root.keyFile", r.KeyFile)
	}
	for i, c := range m.Spec.Clusters {
		check(fmt.Sprintf("spec.clusters[%d] (%s).kubeconfig", i, c.Name), c.Kubeconfig)
	}
	return errors.Join(errs...)
}

// allowedPath: path, with symlinks resolved, lies under one of AllowPaths.
func (p InputPolicy) allowedPath(path string) error {
	if len(p.AllowPaths) == 0 {
		return fmt.Errorf("%w: a spec sent to the hub may not name hub-local files (start the hub with --allow-path DIR to allow a directory)", ErrInputRefused)
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: a spec sent to the hub must name files by absolute path under --allow-path", ErrInputRefused)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("%w: cannot resolve it under --allow-path: %v", ErrInputRefused, errors.Unwrap(err))
	}
	for _, dir := range p.AllowPaths {
		d, err := filepath.EvalSymlinks(dir)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(d, real); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel) {
			return nil
		}
	}
	return fmt.Errorf("%w: it is outside every --allow-path directory (%s)", ErrInputRefused, strings.Join(p.AllowPaths, ", "))
}

// admitConnection checks a cluster connection built from a kubeconfig:
// TLS verification, and exec or auth-provider credential plugins (which run
// programs as the hub's user, with its environment).
func (p InputPolicy) admitConnection(c spec.Cluster, kubeconfig string, kc *kube.Cluster) error {
	where := fmt.Sprintf("%s: context %q of %s", c.Name, c.Context, describeKubeconfig(c.KubeconfigFor(kubeconfig)))
	cfg := kc.Config
	if cfg == nil {
		return nil
	}
	if p.Confined && !p.AllowExecPlugins {
		if cfg.ExecProvider != nil {
			return fmt.Errorf("%s: %w: its user runs the exec credential plugin %q (start the hub with --allow-exec-plugins to allow it)", where, ErrInputRefused, cfg.ExecProvider.Command)
		}
		if cfg.AuthProvider != nil {
			return fmt.Errorf("%s: %w: its user runs the auth-provider plugin %q (start the hub with --allow-exec-plugins to allow it)", where, ErrInputRefused, cfg.AuthProvider.Name)
		}
	}
	if cfg.Insecure {
		if !p.InsecureSkipTLSVerify {
			return fmt.Errorf("%s: %w: it sets insecure-skip-tls-verify, and flotilla sends CA keys and reader tokens over this connection; give the cluster's CA (certificate-authority-data), or pass --insecure-skip-tls-verify for this run", where, ErrInputRefused)
		}
		w := p.Warnings
		if w == nil {
			w = os.Stderr
		}
		fmt.Fprintf(w, "WARNING: %s skips TLS verification (--insecure-skip-tls-verify): CA keys and reader tokens sent to %s can be read by whoever sits on the path\n", where, cfg.Host)
	}
	return nil
}

func describeKubeconfig(path string) string {
	if path == "" {
		return "the default kubeconfig"
	}
	return "kubeconfig " + path
}

// readAdmittedSpec reads a request's spec and refuses it when it names
// files outside the hub's input policy: the hub would read them with its
// own rights on the caller's behalf.
func (s *Server) readAdmittedSpec(w http.ResponseWriter, r *http.Request) (*spec.Mesh, error) {
	m, err := readSpec(w, r)
	if err != nil {
		return nil, err
	}
	if err := s.hub.Inputs.admitSpec(m); err != nil {
		return nil, err
	}
	return m, nil
}

// admitKubeconfigs runs admitConnection on every cluster's kubeconfig before
// an apply records anything: a refused kubeconfig refuses the whole run, and
// leaves the state as it was. Kubeconfigs that do not load are left to the
// spec's input check and the connection, which name them.
func (p InputPolicy) admitKubeconfigs(m *spec.Mesh, kubeconfig string) error {
	quiet := p
	quiet.Warnings = io.Discard // the connection warns, once per cluster
	var errs []error
	for _, c := range m.Spec.Clusters {
		kc, err := kube.FromKubeconfig(c.Name, c.KubeconfigFor(kubeconfig), c.Context)
		if err != nil {
			continue
		}
		if err := quiet.admitConnection(c, kubeconfig, kc); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
