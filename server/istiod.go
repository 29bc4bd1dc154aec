package server

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
)

// IstiodView is what one istiod reports of itself, read the way istioctl
// remote-clusters reads it: /debug/clusterz and /debug/networkz on
// istiod's monitoring port, through the API server's pod proxy (pods/proxy
// on istiod's pods); and the CA istiod uses, from what it publishes.
type IstiodView struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// RemoteClusters maps each remote cluster istiod knows to its sync
	// status ("synced", "syncing", "timeout", ...).
	RemoteClusters map[string]string `json:"remoteClusters,omitempty"`
	// Gateways are the cross-network gateways istiod knows (networkz).
	Gateways []NetworkGateway `json:"gateways,omitempty"`
	// ServiceClusters maps each service (namespace/name) of an ambient
	// istiod's workload view (ambientz) to the clusters its workloads are
	// in, sorted.
	ServiceClusters map[string][]string `json:"serviceClusters,omitempty"`
	// Roots are the fingerprints of the roots istiod publishes to its
	// workloads (ConfigMap istio-ca-root-cert in its namespace): its CA's.
	Roots []string `json:"roots,omitempty"`
	// SelfSignedCA: istiod's namespace holds istio-ca-secret, the CA istiod
	// generates for itself when it starts without cacerts.
	SelfSignedCA bool `json:"selfSignedCA,omitempty"`
	// TrustDomain is the trust domain of istiod's active mesh config
	// (/debug/mesh), the one its CA puts in the SPIFFE identities it
	// issues; empty when istiod did not answer it.
	TrustDomain string `json:"trustDomain,omitempty"`
	Error       string `json:"error,omitempty"`
}

// NetworkGateway is one entry of istiod's /debug/networkz.
type NetworkGateway struct {
	Network string `json:"network"`
	Cluster string `json:"cluster"`
	Addr    string `json:"addr"`
	Port    uint32 `json:"port"`
	// HBONEPort is non-zero for a gateway that takes double HBONE (an
	// ambient east-west gateway's 15008); istiod's model.NetworkGateway
	// has no JSON tags, and its HBONEPort decodes into this.
	HBONEPort uint32 `json:"hbonePort,omitempty"`
}

// Names of what istiod writes (Istio's security/pkg/pki/ca and
// PILOT_CA_CERT_CONFIGMAP).
const (
	istioRootConfigMap = "istio-ca-root-cert"
	istioSelfSignedCA  = "istio-ca-secret"
)

// istiodMonitoringPort is the chart's http-monitoring port, where istiod
// serves its debug endpoints.
const istiodMonitoringPort = 15014

// readIstiods asks every running istiod pod of the cluster (label
// app=istiod, any namespace) for its clusterz.
// In an ambient cluster it also reads istiod's workload view (ambientz).
func readIstiods(ctx context.Context, kc *kube.Cluster, ambient bool) ([]IstiodView, error) {
	pods, err := kc.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod", FieldSelector: "status.phase=Running"})
	if err != nil {
		return nil, fmt.Errorf("%s: list istiod pods: %w", kc.Name, err)
	}
	var out []IstiodView
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		v := IstiodView{Namespace: p.Namespace, Pod: p.Name}
		body, err := kc.Kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(monitoringPort(&p)), "/debug/clusterz", nil).DoRaw(ctx)
		if err != nil {
			v.Error = fmt.Sprintf("%s: pod %s/%s: /debug/clusterz: %v", kc.Name, p.Namespace, p.Name, err)
			out = append(out, v)
			continue
		}
		var clusters []struct {
			ID         string `json:"id"`
			SyncStatus string `json:"syncStatus"`
		}
		if err := json.Unmarshal(body, &clusters); err != nil {
			v.Error = fmt.Sprintf("%s: pod %s/%s: /debug/clusterz: %v", kc.Name, p.Namespace, p.Name, err)
			out = append(out, v)
			continue
		}
		v.RemoteClusters = map[string]string{}
		for _, c := range clusters {
			v.RemoteClusters[c.ID] = c.SyncStatus
		}
		if err := readNetworkz(ctx, kc, &p, &v); err != nil {
			v.Error = err.Error()
		} else if err := readIstiodCA(ctx, kc, &v); err != nil {
			v.Error = err.Error()
		} else if v.TrustDomain = readIstiodTrustDomain(ctx, kc, &p); ambient {
			if err := readAmbientz(ctx, kc, &p, &v); err != nil {
				v.Error = err.Error()
			}
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Pod < out[j].Namespace+"/"+out[j].Pod })
	return out, nil
}

// readNetworkz reads the cross-network gateways istiod knows.
func readNetworkz(ctx context.Context, kc *kube.Cluster, p *corev1.Pod, v *IstiodView) error {
	body, err := kc.Kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(monitoringPort(p)), "/debug/networkz", nil).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%s: pod %s/%s: /debug/networkz: %w", kc.Name, p.Namespace, p.Name, err)
	}
	// An istiod without a network manager answers nothing.
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, &v.Gateways); err != nil {
		return fmt.Errorf("%s: pod %s/%s: /debug/networkz: %w", kc.Name, p.Namespace, p.Name, err)
	}
	return nil
}

// readIstiodCA reads which roots istiod publishes and whether it made
// itself a CA.
func readIstiodCA(ctx context.Context, kc *kube.Cluster, v *IstiodView) error {
	cm, err := kc.Kube.CoreV1().ConfigMaps(v.Namespace).Get(ctx, istioRootConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("%s: read configmap %s/%s: %w", kc.Name, v.Namespace, istioRootConfigMap, err)
	default:
		if b, err := pki.ParseBundle([]byte(cm.Data["root-cert.pem"])); err == nil {
			v.Roots = b.Fingerprints()
		}
	}
	// Only the object's presence matters: nothing of it is kept.
	_, err = kc.Kube.CoreV1().Secrets(v.Namespace).Get(ctx, istioSelfSignedCA, metav1.GetOptions{})
	switch {
	case err == nil:
		v.SelfSignedCA = true
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("%s: read secret %s/%s: %w", kc.Name, v.Namespace, istioSelfSignedCA, err)
	}
	return nil
}

// readIstiodTrustDomain is the trust domain of istiod's active mesh
// config, or "" when it cannot be read: the view stays usable without it,
// and the trust-domain check then says nothing of this istiod.
func readIstiodTrustDomain(ctx context.Context, kc *kube.Cluster, p *corev1.Pod) string {
	body, err := kc.Kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(monitoringPort(p)), "/debug/mesh", nil).DoRaw(ctx)
	if err != nil {
		return ""
	}
	var mesh struct {
		TrustDomain string `json:"trustDomain"`
	}
	if json.Unmarshal(body, &mesh) != nil {
		return ""
	}
	return mesh.TrustDomain
}

func monitoringPort(p *corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "http-monitoring" {
				return int(cp.ContainerPort)
			}
		}
	}
	return istiodMonitoringPort
}

// istiodCheck says whether the cluster's istiods see every cluster its
// remote secrets name, synced. It is nil for a cluster that runs no istiod
// (a remote, a data plane, or a control plane not installed yet).
func istiodCheck(c ClusterStatus) *Check {
	if len(c.Istiods) == 0 {
		return nil
	}
	ck := &Check{Name: "istiod sees remote clusters", Cluster: c.Name}
	var problems []string
	seen := map[string]string{}
	for _, v := range c.Istiods {
		if v.Error != "" {
			problems = append(problems, v.Error)
			continue
		}
		for id, st := range v.RemoteClusters {
			seen[id] = st
			if st != "synced" {
				problems = append(problems, fmt.Sprintf("istiod %s/%s: cluster %s is %s%s", v.Namespace, v.Pod, id, st, readPath(c, id)))
			}
		}
	}
	for _, rs := range c.RemoteSecrets {
		if !rs.Expected {
			continue
		}
		if _, ok := seen[rs.Target]; !ok {
			problems = append(problems, fmt.Sprintf("no istiod knows cluster %s (secret %s/%s)", rs.Target, rs.Namespace, rs.Name))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod reads remote clusters with the remote secrets' reader tokens: run flotilla apply, then look at istiod's log for the remote cluster's sync errors (a missing permission in the reader's ClusterRole shows there)"
		if strings.Contains(ck.Message, "(read direct ") {
			ck.Hint += "; a cluster read directly whose API server is not reachable from the reading cluster's network (a private cluster) needs apiServerAccess: gateway in the spec"
		}
		return ck
	}
	ck.OK = true
	var ids []string
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	ck.Message = "synced: " + strings.Join(ids, ", ")
	return ck
}

// readPath is " (read <path>)" for the remote secret of c that reads
// target, so that a cluster istiod cannot sync names the way it is read.
func readPath(c ClusterStatus, target string) string {
	for _, rs := range c.RemoteSecrets {
		if rs.Target == target && rs.Path != "" {
			return " (read " + rs.Path + ")"
		}
	}
	return ""
}

// istiodCACheck says whether the cluster's istiods sign with the plug-in CA
// flotilla wrote: each publishes the root of the cluster's cacerts. istiod
// reads cacerts only when it starts; one that started before cacerts
// existed runs a CA of its own (istio-ca-secret) and keeps it. Nil for a
// cluster without istiods or without cacerts (another check says so).
func istiodCACheck(c ClusterStatus) *Check {
	if len(c.Istiods) == 0 || c.RootFingerprint == "" {
		return nil
	}
	ck := &Check{Name: "istiod uses the mesh CA", Cluster: c.Name}
	var problems []string
	var restart []string
	for _, v := range c.Istiods {
		if v.Error != "" {
			continue // istiodCheck reports it
		}
		if slices.Contains(v.Roots, c.RootFingerprint) {
			continue
		}
		msg := fmt.Sprintf("istiod %s/%s publishes root %s in %s, not cacerts' root %s", v.Namespace, v.Pod, shortList(v.Roots), istioRootConfigMap, short(c.RootFingerprint))
		if v.SelfSignedCA {
			msg += fmt.Sprintf(": it runs a self-signed CA (secret %s/%s), so it started before cacerts existed", v.Namespace, istioSelfSignedCA)
		}
		problems = append(problems, msg)
		restart = append(restart, fmt.Sprintf("kubectl -n %s delete secret %s --ignore-not-found && kubectl -n %s delete pod %s", v.Namespace, istioSelfSignedCA, v.Namespace, v.Pod))
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod loads cacerts only when it starts: remove its own CA and restart it (" + strings.Join(restart, "; ") + ")"
		return ck
	}
	ck.OK = true
	ck.Message = "signs under root " + short(c.RootFingerprint)
	return ck
}

// istiodTrustDomainCheck says whether the cluster's istiods issue
// identities in the spec's trust domain (want), as their active mesh config
// says. Nil when no istiod told its mesh config.
func istiodTrustDomainCheck(c ClusterStatus, want string) *Check {
	ck := &Check{Name: "istiod issues the mesh's trust domain", Cluster: c.Name}
	var problems, seen []string
	for _, v := range c.Istiods {
		if v.Error != "" || v.TrustDomain == "" {
			continue
		}
		seen = append(seen, v.Namespace+"/"+v.Pod)
		if v.TrustDomain != want {
			problems = append(problems, fmt.Sprintf("istiod %s/%s issues spiffe://%s/... identities (its mesh config's trustDomain), not the spec's trust domain %s", v.Namespace, v.Pod, v.TrustDomain, want))
		}
	}
	if len(seen) == 0 {
		return nil
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod takes its trust domain from meshConfig.trustDomain of its Istio resource (the istio ConfigMap its chart renders): run flotilla apply; if the resource already names " + want + ", look for another tool's values overriding it. Workloads keep their old identities until their certificates renew"
		return ck
	}
	ck.OK = true
	ck.Message = "spiffe://" + want + "/... (" + strings.Join(seen, ", ") + ")"
	return ck
}

// istiodNetworksCheck says whether the cluster's istiods know the
// cross-network gateway of every network they serve endpoints of (want:
// the networks of this cluster and of the clusters it reads that run one);
// in an ambient mesh, a gateway with its HBONE port, which is what ztunnel
// is sent to. Nil when there is nothing to know (a single network, or no
// istiod).
func istiodNetworksCheck(c ClusterStatus, want []string, ambient bool) *Check {
	if len(c.Istiods) == 0 || len(want) < 2 {
		return nil
	}
	ck := &Check{Name: "istiod knows every network's gateway", Cluster: c.Name}
	var problems []string
	for _, v := range c.Istiods {
		if v.Error != "" {
			continue // istiodCheck reports it
		}
		known := map[string]bool{}
		for _, g := range v.Gateways {
			if g.Addr != "" && (!ambient || g.HBONEPort != 0) {
				known[g.Network] = true
			}
		}
		for _, n := range want {
			if known[n] {
				continue
			}
			if ambient {
				problems = append(problems, fmt.Sprintf("istiod %s/%s knows no HBONE gateway (port %d) of network %s", v.Namespace, v.Pod, gateways.PortHBONE, n))
			} else {
				problems = append(problems, fmt.Sprintf("istiod %s/%s knows no gateway of network %s", v.Namespace, v.Pod, n))
			}
		}
	}
	if len(problems) > 0 {
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod finds a network's gateway by the topology.istio.io/network label on the east-west gateway's Service in a cluster it reads: run flotilla apply, and check that gateway's Service has an address"
		if ambient {
			ck.Hint = "istiod deploys each ambient east-west Gateway (class istio-east-west) as a Service with the HBONE port 15008 and reads the other clusters' through its remote secrets: run flotilla apply, check that istiod runs with AMBIENT_ENABLE_MULTI_NETWORK=true and that each gateway's Service has an address"
		}
		return ck
	}
	ck.OK = true
	ck.Message = "gateways of " + strings.Join(want, ", ")
	if ambient {
		ck.Message = fmt.Sprintf("HBONE gateways (port %d) of %s", gateways.PortHBONE, strings.Join(want, ", "))
	}
	return ck
}

func shortList(fps []string) string {
	if len(fps) == 0 {
		return "(none)"
	}
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = short(f)
	}
	return strings.Join(out, ",")
}
