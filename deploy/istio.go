package deploy

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Sail Operator resources.
const (
	SailAPIVersion = "sailoperator.io/v1"
	// IstioName is the Istio resource of primaries, remotes and the
	// control-plane cluster's own (gateway-serving) control plane; "default"
	// makes its revision the default one.
	IstioName = "default"
	// ExternalIstiodName is the Istio resource of an external control plane,
	// on the control-plane cluster and on its data-plane clusters; it is also
	// the revision name, which the guide's webhook and ConfigMap names embed.
	ExternalIstiodName = "external-istiod"
	IstioCNIName       = "default"
	// AmbientProfile is the Istio, IstioCNI and ZTunnel profile of ambient
	// clusters.
	AmbientProfile = "ambient"
)

// PendingAddress stands in for a gateway address that is not known yet, in
// dry runs and renders that allow it (Options.AllowPendingAddress). ".invalid"
// never resolves (RFC 6761), so a resource carrying it cannot half-work.
const PendingAddress = "pending.flotilla.invalid"

// SailVersion is the form Sail's spec.version enum uses: v1.30.3.
func SailVersion(v string) string {
	if v == "" || strings.HasPrefix(v, "v") || v == "master" {
		return v
	}
	return "v" + v
}

func sailResource(kind, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(SailAPIVersion)
	u.SetKind(kind)
	u.SetName(name)
	u.SetLabels(kube.ManagedLabels())
	return u
}

// istio is a Sail Istio resource with values merged with the caller's extra
// values (Options.Values, then Options.ClusterValues[cluster]).
func (p *planner) istio(name, namespace, profile string, values map[string]any) *unstructured.Unstructured {
	values = MergeValues(values, p.trustDomainValues())
	values = MergeValues(values, p.opts.Values)
	values = MergeValues(values, p.opts.ClusterValues[p.m.Name])
	spec := map[string]any{
		"version":   SailVersion(p.opts.Version),
		"namespace": namespace,
	}
	if profile != "" {
		spec["profile"] = profile
	}
	if len(values) > 0 {
		spec["values"] = values
	}
	return sailResource("Istio", name, spec)
}

// trustDomainValues set meshConfig.trustDomain, on every Istio resource
// whatever its role: istiod signs identities in its mesh config's trust
// domain, and a remote's or data plane's mesh config is the one the
// serving istiod injects with (and, for a config cluster, reads). The
// default is left unwritten: Istio's charts default to cluster.local, so
// meshes on it keep their Istio resources byte for byte.
func (p *planner) trustDomainValues() map[string]any {
	if td := p.opts.TrustDomain; td != "" && td != DefaultTrustDomain {
		return map[string]any{"meshConfig": map[string]any{"trustDomain": td}}
	}
	return nil
}

func (p *planner) istioCNI() *unstructured.Unstructured {
	spec := map[string]any{
		"version":   SailVersion(p.opts.Version),
		"namespace": p.opts.cniNamespace(),
	}
	if p.m.Ambient() {
		// The CNI redirects ambient pods' traffic to the node's ztunnel.
		spec["profile"] = AmbientProfile
	}
	return sailResource("IstioCNI", IstioCNIName, spec)
}

// ztunnel is the Sail ZTunnel of an ambient cluster. Its values are the
// ztunnel chart's (Sail merges values.ztunnel over them): ztunnel reports
// its cluster to istiod (ISTIO_META_CLUSTER_ID) and its network, which
// must agree with the Istio resource's.
func (p *planner) ztunnel() *unstructured.Unstructured {
	zt := map[string]any{"multiCluster": map[string]any{"clusterName": p.m.Name}}
	if p.m.Network != "" {
		zt["network"] = p.m.Network
	}
	return sailResource("ZTunnel", ZTunnelName, map[string]any{
		"version":   SailVersion(p.opts.Version),
		"namespace": p.opts.ztunnelNamespace(),
		"values":    map[string]any{"ztunnel": zt},
	})
}

// ambientValues: an ambient primary names its mesh, cluster and network as
// every primary does, trusts ztunnel in its namespace, and on a
// multi-network mesh turns on ambient multi-network (which also serves the
// istio-east-west GatewayClass its east-west gateway uses).
func (p *planner) ambientValues() map[string]any {
	values := p.primaryValues()
	pilot := map[string]any{"trustedZtunnelNamespace": p.opts.ztunnelNamespace()}
	if p.l.MultiNetwork {
		pilot["env"] = map[string]any{AmbientMultiNetworkEnv: "true"}
	}
	values["pilot"] = pilot
	return values
}

// primaryValues: every primary names its mesh, cluster and network; one that
// serves remotes also runs as their external istiod.
func (p *planner) primaryValues() map[string]any {
	global := map[string]any{
		"meshID":       p.opts.MeshID,
		"multiCluster": map[string]any{"clusterName": p.m.Name},
	}
	if p.m.Network != "" {
		global["network"] = p.m.Network
	}
	if exposesIstiod(p.m) {
		global["externalIstiod"] = true
	}
	return map[string]any{"global": global}
}

// remoteValues: a remote runs no istiod; its proxies and webhooks reach the
// primary's istiod at the primary's east-west gateway.
func (p *planner) remoteValues(pilotAddress string) map[string]any {
	global := map[string]any{
		"meshID":             p.opts.MeshID,
		"multiCluster":       map[string]any{"clusterName": p.m.Name},
		"remotePilotAddress": pilotAddress,
	}
	if p.m.Network != "" {
		global["network"] = p.m.Network
	}
	return map[string]any{
		"global":       global,
		"istiodRemote": map[string]any{"injectionPath": injectionPath(p.m.Name, p.m.Network)},
	}
}

// injectionPath is the path of istiod's injection webhook for a cluster on a
// network; istiod reads the cluster and network of the pods it injects from it.
func injectionPath(cluster, network string) string {
	if network == "" {
		return "/inject/cluster/" + cluster
	}
	return fmt.Sprintf("/inject/cluster/%s/net/%s", cluster, network)
}

// dataPlaneValues: the data-plane side of an external control plane
// (OpenShift Service Mesh 3 installation guide, chapter 8). The config
// cluster also holds the mesh configuration the external istiod reads.
func (p *planner) dataPlaneValues(pilotAddress string, configCluster bool) map[string]any {
	ns := p.l.Namespaces.External
	global := map[string]any{
		"istioNamespace":     ns,
		"remotePilotAddress": pilotAddress,
	}
	values := map[string]any{
		"defaultRevision": ExternalIstiodName,
		"global":          global,
		"istiodRemote":    map[string]any{"injectionPath": injectionPath(p.m.Name, p.m.Network)},
	}
	if configCluster {
		global["configCluster"] = true
		values["pilot"] = map[string]any{"configMap": true}
	}
	return values
}

// externalIstiodValues: the external istiod on the control-plane cluster,
// serving configCluster, reached at address through the ingress gateway.
func (p *planner) externalIstiodValues(address string, configCluster string) map[string]any {
	ns := p.l.Namespaces.External
	dp, _ := p.l.Cluster(configCluster)
	xds := fmt.Sprintf("%s:%d", address, PortIstiod)
	global := map[string]any{
		"caAddress":              xds,
		"istioNamespace":         ns,
		"operatorManageWebhooks": true,
		"configValidation":       false,
		"meshID":                 p.opts.MeshID,
		"multiCluster":           map[string]any{"clusterName": configCluster},
	}
	if dp.Network != "" {
		global["network"] = dp.Network
	}
	return map[string]any{
		"meshConfig": map[string]any{
			"rootNamespace": ns,
			"defaultConfig": map[string]any{"discoveryAddress": xds},
		},
		"pilot": map[string]any{
			"enabled": true,
			// The mesh config and injection templates come from the config
			// cluster's remote install, mirrored here under the revision's names.
			"volumes": []any{
				map[string]any{"name": "config-volume", "configMap": map[string]any{"name": "istio-" + ExternalIstiodName}},
				map[string]any{"name": "inject-volume", "configMap": map[string]any{"name": "istio-sidecar-injector-" + ExternalIstiodName}},
			},
			"volumeMounts": []any{
				map[string]any{"name": "config-volume", "mountPath": "/etc/istio/config"},
				map[string]any{"name": "inject-volume", "mountPath": "/var/lib/istio/inject"},
			},
			"env": map[string]any{
				"INJECTION_WEBHOOK_CONFIG_NAME":  fmt.Sprintf("istio-sidecar-injector-%s-%s", ExternalIstiodName, ns),
				"VALIDATION_WEBHOOK_CONFIG_NAME": fmt.Sprintf("istio-validator-%s-%s", ExternalIstiodName, ns),
				"EXTERNAL_ISTIOD":                "true",
				"LOCAL_CLUSTER_SECRET_WATCHER":   "true",
				"CLUSTER_ID":                     configCluster,
				"SHARED_MESH_CONFIG":             "istio",
			},
		},
		"global": global,
	}
}

// MergeValues deep-merges extra into base (extra wins) and returns base; maps
// merge key by key, anything else is replaced. Neither input is modified.
func MergeValues(base, extra map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(extra))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range extra {
		if bm, ok := out[k].(map[string]any); ok {
			if em, ok := v.(map[string]any); ok {
				out[k] = MergeValues(bm, em)
				continue
			}
		}
		out[k] = v
	}
	return out
}
