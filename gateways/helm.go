package gateways

import (
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/flotillamesh/flotilla/deploy"
)

// HelmRelease is the upstream Helm equivalent of one Sail resource or
// gateway of a plan, for clusters that install Istio with Helm instead of
// the Sail Operator.
type HelmRelease struct {
	// Name is the release name, Chart the chart in the istio repository
	// (https://istio-release.storage.googleapis.com/charts).
	Name, Chart, Namespace string
	Values                 map[string]any
}

// Command is the helm invocation that installs the release from a values file.
func (r HelmRelease) Command(valuesFile string, version string) string {
	return fmt.Sprintf("helm upgrade --install %s istio/%s -n %s --version %s -f %s", r.Name, r.Chart, r.Namespace, trimV(version), valuesFile)
}

func trimV(v string) string {
	if len(v) > 1 && v[0] == 'v' {
		return v[1:]
	}
	return v
}

// HelmReleases are the istiod (or istio-cni) and gateway releases that set
// up the same control plane and gateway as the plan's Sail resources. The
// Gateway/VirtualService resources and namespaces are the same in both
// installs and stay in the plan's objects.
func (p ClusterPlan) HelmReleases() []HelmRelease {
	var out []HelmRelease
	for _, o := range p.ControlPlane {
		u := o.Unstructured()
		spec, _ := u.Object["spec"].(map[string]any)
		ns, _ := spec["namespace"].(string)
		values, _ := spec["values"].(map[string]any)
		values = deploy.MergeValues(values, nil)
		if profile, ok := spec["profile"].(string); ok {
			values["profile"] = profile
		}
		switch u.GetKind() {
		case "IstioCNI":
			out = append(out, HelmRelease{Name: "istio-cni", Chart: "cni", Namespace: ns, Values: values})
		case "ZTunnel":
			out = append(out, HelmRelease{Name: "ztunnel", Chart: "ztunnel", Namespace: ns, Values: ztunnelHelmValues(values)})
		case "Istio":
			name := "istiod"
			if u.GetName() != deploy.IstioName {
				// Sail names the revision after the resource.
				values["revision"] = u.GetName()
				name = "istiod-" + u.GetName()
			}
			out = append(out, HelmRelease{Name: name, Chart: "istiod", Namespace: ns, Values: values})
		}
	}
	// istiod deploys an ambient gateway from its Gateway API Gateway, which
	// stays in the plan's objects: there is no gateway chart release.
	if g := p.Gateway; g != nil && !g.Ambient {
		values := map[string]any{"name": g.Name, "labels": toAny(g.PodLabels())}
		if g.Network != "" {
			// networkGateway adds the network label, the requested network
			// view and the 15443/15012/15017 ports.
			values["networkGateway"] = g.Network
		}
		svc := map[string]any{"type": string(g.Exposure.ServiceType())}
		if a := g.Exposure.Address; a != "" {
			if g.Exposure.ServiceType() == corev1.ServiceTypeLoadBalancer {
				svc["loadBalancerIP"] = a
			} else {
				svc["externalIPs"] = []any{a}
			}
		}
		var ports []any
		for _, port := range g.Ports {
			ports = append(ports, map[string]any{"name": port.Name, "port": port.Number, "targetPort": port.Number, "protocol": "TCP"})
		}
		svc["ports"] = ports
		values["service"] = svc
		values["autoscaling"] = map[string]any{"enabled": true, "minReplicas": g.MinReplicas, "maxReplicas": g.MaxReplicas, "targetCPUUtilizationPercentage": 80}
		out = append(out, HelmRelease{Name: g.Name, Chart: "gateway", Namespace: g.Namespace, Values: values})
	}
	return out
}

// ztunnelHelmValues are a Sail ZTunnel's values as the ztunnel chart takes
// them: Sail merges values.ztunnel over the chart's top level; the network
// goes where Istio's install guide sets it (global.network, which the chart
// flattens into its network value).
func ztunnelHelmValues(sail map[string]any) map[string]any {
	zt, _ := sail["ztunnel"].(map[string]any)
	out := deploy.MergeValues(nil, zt)
	if global, ok := sail["global"].(map[string]any); ok {
		out["global"] = deploy.MergeValues(nil, global)
	}
	if n, ok := out["network"]; ok {
		delete(out, "network")
		out["global"] = deploy.MergeValues(asMap(out["global"]), map[string]any{"network": n})
	}
	return out
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// RenderHelm writes the plans' Helm values, one file per release:
// DIR/helm/<cluster>/<release>.values.yaml, each headed by its helm command.
func RenderHelm(dir string, plans []ClusterPlan, version string) ([]string, error) {
	var paths []string
	for _, p := range plans {
		cdir := filepath.Join(dir, "helm", p.Cluster)
		if err := os.MkdirAll(cdir, 0o755); err != nil {
			return paths, fmt.Errorf("%s: render helm values: %w", p.Cluster, err)
		}
		for _, r := range p.HelmReleases() {
			data, err := yaml.Marshal(r.Values)
			if err != nil {
				return paths, fmt.Errorf("%s: render helm values %s: %w", p.Cluster, r.Name, err)
			}
			path := filepath.Join(cdir, r.Name+".values.yaml")
			header := "# " + r.Command(filepath.Base(path), deploy.SailVersion(version)) + "\n"
			if err := os.WriteFile(path, append([]byte(header), data...), 0o644); err != nil {
				return paths, fmt.Errorf("%s: render helm values %s: %w", p.Cluster, r.Name, err)
			}
			paths = append(paths, path)
		}
	}
	return paths, nil
}
