package sail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"

	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	releasecommon "helm.sh/helm/v4/pkg/release/common"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// Chart directories under the module's manifests/charts.
const (
	ChartIstiod = "istio-control/istio-discovery"
	ChartBase   = "base"
	ChartCNI    = "istio-cni"
	releaseCNI  = "istio-cni"
	// ManagedByKey and ManagedBy are the label Sail's post-renderer puts on
	// every object it installs (not app.kubernetes.io/managed-by, which
	// Helm sets to Helm and checks before adopting an object).
	ManagedByKey = "managed-by"
	ManagedBy    = "sail-operator"
)

// ReleaseName is Sail's name for a revision's release of a chart:
// <revision>-istiod, <revision>-base.
func ReleaseName(revision, chart string) string { return revision + "-" + chart }

// Charts installs and removes Istio's charts as Helm releases in one cluster.
type Charts struct {
	// Dir holds the charts (the module's manifests/charts).
	Dir    string
	getter genericclioptions.RESTClientGetter
	log    *slog.Logger
}

// NewCharts reads the cluster through kubeconfig; Helm keeps its releases
// in Secrets, as Sail's chart manager does by default.
func NewCharts(dir, kubeconfig string, log *slog.Logger) *Charts {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	return &Charts{Dir: dir, getter: flags, log: log}
}

func (c *Charts) config(namespace string) (*action.Configuration, error) {
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(c.log.Handler()))
	if err := cfg.Init(c.getter, namespace, "secret"); err != nil {
		return nil, fmt.Errorf("helm in namespace %s: %w", namespace, err)
	}
	return cfg, nil
}

// Release is the outcome of one install or upgrade.
type Release struct {
	Name, Namespace string
	Version         int
	Status          string
}

// Apply installs the chart as release name in namespace, or upgrades the
// release, with Sail's settings: no CRDs, hooks only waited for, client-side
// apply, one revision of history, owner added to every object. A release
// left pending is marked failed first; a failed first install is
// uninstalled and installed again; a failed upgrade is rolled back first.
func (c *Charts) Apply(ctx context.Context, chartDir, namespace, name string, values map[string]any, owner *metav1.OwnerReference) (Release, error) {
	ch, err := loader.LoadDir(filepath.Join(c.Dir, chartDir))
	if err != nil {
		return Release{}, fmt.Errorf("load chart %s: %w", chartDir, err)
	}
	if chartDir == ChartBase {
		// Sail's copy of the base chart has no CRD templates: the operator
		// installs Istio's CRDs itself (the lab installs them beforehand).
		// The chart's base.enableCRDTemplates cannot be turned off through
		// values: its profile merge drops false over a true default.
		ch.Templates = slices.DeleteFunc(ch.Templates, func(f *common.File) bool { return f.Name == "templates/crds.yaml" })
	}
	cfg, err := c.config(namespace)
	if err != nil {
		return Release{}, err
	}
	rel, err := getRelease(cfg, name)
	if err != nil {
		return Release{}, err
	}
	if rel != nil && rel.Info.Status.IsPending() {
		rel.SetStatus(releasecommon.StatusFailed, fmt.Sprintf("release unlocked from %q state", rel.Info.Status))
		if err := cfg.Releases.Update(rel); err != nil {
			return Release{}, fmt.Errorf("unlock release %s/%s: %w", namespace, name, err)
		}
	}
	if rel != nil {
		switch st := rel.Info.Status; {
		case st == releasecommon.StatusDeployed:
		case st == releasecommon.StatusFailed && rel.Version > 1:
			rb := action.NewRollback(cfg)
			rb.WaitStrategy = kube.HookOnlyStrategy
			rb.ServerSideApply = "false"
			if err := rb.Run(name); err != nil {
				return Release{}, fmt.Errorf("roll back release %s/%s: %w", namespace, name, err)
			}
		case st == releasecommon.StatusUninstalling, st == releasecommon.StatusFailed:
			un := action.NewUninstall(cfg)
			un.WaitStrategy = kube.HookOnlyStrategy
			if _, err := un.Run(name); err != nil {
				return Release{}, fmt.Errorf("uninstall failed release %s/%s: %w", namespace, name, err)
			}
			rel = nil
		default:
			return Release{}, fmt.Errorf("release %s/%s: unexpected status %s", namespace, name, st)
		}
	}
	var out any
	if rel != nil {
		up := action.NewUpgrade(cfg)
		up.PostRenderer = postRenderer{owner: owner, update: true}
		up.MaxHistory = 1
		up.SkipCRDs = true
		up.DisableOpenAPIValidation = true
		up.WaitStrategy = kube.HookOnlyStrategy
		up.ServerSideApply = "false"
		out, err = up.RunWithContext(ctx, name, ch, values)
		if err != nil {
			return Release{}, fmt.Errorf("upgrade release %s/%s of chart %s: %w", namespace, name, chartName(ch), err)
		}
	} else {
		in := action.NewInstall(cfg)
		in.PostRenderer = postRenderer{owner: owner}
		in.Namespace = namespace
		in.ReleaseName = name
		in.SkipCRDs = true
		in.DisableOpenAPIValidation = true
		in.WaitStrategy = kube.HookOnlyStrategy
		in.ServerSideApply = false
		out, err = in.RunWithContext(ctx, ch, values)
		if err != nil {
			return Release{}, fmt.Errorf("install release %s/%s of chart %s: %w", namespace, name, chartName(ch), err)
		}
	}
	r, ok := out.(*releasev1.Release)
	if !ok {
		return Release{}, fmt.Errorf("release %s/%s: unexpected type %T", namespace, name, out)
	}
	return Release{Name: r.Name, Namespace: r.Namespace, Version: r.Version, Status: string(r.Info.Status)}, nil
}

// Uninstall removes release name from namespace; a missing release is fine.
func (c *Charts) Uninstall(namespace, name string) error {
	cfg, err := c.config(namespace)
	if err != nil {
		return err
	}
	rel, err := getRelease(cfg, name)
	if err != nil || rel == nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	if _, err := un.Run(name); err != nil && !errors.Is(err, driver.ErrReleaseNotFound) {
		return fmt.Errorf("uninstall release %s/%s: %w", namespace, name, err)
	}
	return nil
}

func getRelease(cfg *action.Configuration, name string) (*releasev1.Release, error) {
	got, err := action.NewGet(cfg).Run(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get release %s: %w", name, err)
	}
	rel, ok := got.(*releasev1.Release)
	if !ok {
		return nil, fmt.Errorf("release %s: unexpected type %T", name, got)
	}
	return rel, nil
}

func chartName(ch *chartv2.Chart) string {
	if ch.Metadata == nil {
		return "?"
	}
	return ch.Metadata.Name
}

// postRenderer does what Sail's does to every rendered object: the owner
// reference to the resource, the managed-by label, and on upgrades no
// failurePolicy on validating webhooks (istiod's validation controller owns it).
type postRenderer struct {
	owner  *metav1.OwnerReference
	update bool
}

func (p postRenderer) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	out := &bytes.Buffer{}
	enc := yaml.NewEncoder(out)
	enc.SetIndent(2)
	dec := yaml.NewDecoder(in)
	for {
		obj := map[string]any{}
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("post-render: %w", err)
		}
		if len(obj) == 0 {
			continue
		}
		if p.owner != nil {
			refs, _, _ := unstructured.NestedSlice(obj, "metadata", "ownerReferences")
			ref, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p.owner)
			if err != nil {
				return nil, err
			}
			if err := unstructured.SetNestedSlice(obj, append(refs, ref), "metadata", "ownerReferences"); err != nil {
				return nil, err
			}
		}
		if err := unstructured.SetNestedField(obj, ManagedBy, "metadata", "labels", ManagedByKey); err != nil {
			return nil, err
		}
		if p.update && obj["kind"] == "ValidatingWebhookConfiguration" {
			if hooks, ok := obj["webhooks"].([]any); ok {
				for _, h := range hooks {
					if m, ok := h.(map[string]any); ok {
						delete(m, "failurePolicy")
					}
				}
			}
		}
		if err := enc.Encode(obj); err != nil {
			return nil, err
		}
	}
	return out, enc.Close()
}
