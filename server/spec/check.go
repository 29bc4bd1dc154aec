package spec

import (
	"context"
	"fmt"
	"net/url"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
)

// CheckInputs is the part of validation that reads the local machine: every
// cluster's context exists in its kubeconfig (the cluster's own kubeconfig
// file, else kubeconfig, else $KUBECONFIG / ~/.kube/config), the files the
// spec names are readable, and no cluster that others read is left with a
// loopback API server. It contacts no cluster. All problems come back at once
// as an *Error. Relative paths are relative to the working directory.
func CheckInputs(ctx context.Context, m *Mesh, kubeconfig string) error {
	var ps []Problem
	add := func(field, format string, args ...any) {
		ps = append(ps, Problem{Line: m.lines[field], Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if r := m.Spec.PKI.Root; r != nil {
		for _, f := range []struct{ field, path string }{{"spec.pki.root.certFile", r.CertFile}, {"spec.pki.root.keyFile", r.KeyFile}} {
			if f.path == "" {
				continue
			}
			if err := readable(f.path); err != nil {
				add(f.field, "%v", err)
			}
		}
	}
	configs := map[string]*clientcmdapi.Config{}
	loadErrs := map[string]error{}
	for i, cl := range m.Spec.Clusters {
		if err := ctx.Err(); err != nil {
			return err
		}
		f := fmt.Sprintf("spec.clusters[%d]", i)
		path := kubeconfig
		if cl.Kubeconfig != "" {
			path = cl.Kubeconfig
			if err := readable(path); err != nil {
				add(f+".kubeconfig", "cluster %s: %v", cl.Name, err)
				continue
			}
		}
		cfg, seen := configs[path]
		err := loadErrs[path]
		if !seen && err == nil {
			cfg, err = loadKubeconfig(path)
			configs[path], loadErrs[path] = cfg, err
		}
		where := describeKubeconfig(path)
		if err != nil {
			add(f+".context", "cluster %s: load %s: %v", cl.Name, where, err)
			continue
		}
		kctx, ok := cfg.Contexts[cl.Context]
		if !ok {
			add(f+".context", "cluster %s: context %q not found in %s", cl.Name, cl.Context, where)
			continue
		}
		kcl, ok := cfg.Clusters[kctx.Cluster]
		if !ok || kcl.Server == "" {
			add(f+".context", "cluster %s: context %q refers to cluster %q, which has no server in %s", cl.Name, cl.Context, kctx.Cluster, where)
			continue
		}
		// Read through its gateway, a cluster's own address is its admin
		// path only: readers never use it.
		if cl.APIServer == "" && cl.APIServerAccess != deploy.APIServerViaGateway && !m.Spec.AllowLoopbackAPIServers && readByOthers(m, cl) {
			if u, err := url.Parse(kcl.Server); err == nil && IsLoopbackHost(u.Hostname()) {
				add(f+".apiServer", "cluster %s: other clusters read this one, but context %q points at %s, a loopback address they cannot reach; set apiServer to an address they can (or spec.allowLoopbackAPIServers when every cluster runs on this host)", cl.Name, cl.Context, kcl.Server)
			}
		}
	}
	if len(ps) > 0 {
		sortProblems(ps)
		return &Error{Problems: ps}
	}
	return nil
}

// KubeconfigFor returns the kubeconfig path a cluster is reached through
// ("" means the default loading rules), given the one flotilla was handed.
func (c Cluster) KubeconfigFor(kubeconfig string) string {
	if c.Kubeconfig != "" {
		return c.Kubeconfig
	}
	return kubeconfig
}

func loadKubeconfig(path string) (*clientcmdapi.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cfg, err := rules.Load()
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func describeKubeconfig(path string) string {
	if path == "" {
		return "the default kubeconfig ($KUBECONFIG or ~/.kube/config)"
	}
	return "kubeconfig " + path
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// readByOthers reports whether some other cluster's istiod reads c's API
// server through a remote secret: primaries read every other cluster, and
// control-plane clusters read their data-plane clusters.
func readByOthers(m *Mesh, c Cluster) bool {
	if c.Role == federation.RoleControlPlane {
		return false
	}
	for _, o := range m.Spec.Clusters {
		if o.Name != c.Name && (o.Role == federation.RolePrimary || o.Role == federation.RoleControlPlane) {
			return true
		}
	}
	return false
}
