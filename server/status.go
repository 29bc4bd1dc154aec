package server

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// Status is the mesh as observed in its clusters, compared with the spec
// and the state. Its JSON form is flotilla's stable `status -o json` output.
type Status struct {
	Mesh     string              `json:"mesh"`
	Topology federation.Topology `json:"topology"`
	// RootFingerprint is the SHA-256 fingerprint of the root in the state.
	RootFingerprint string    `json:"rootFingerprint,omitempty"`
	ObservedAt      time.Time `json:"observedAt"`
	// CRL is the hub's current ca-crl.pem (nil while nothing is revoked).
	CRL      *CRLInfo        `json:"crl,omitempty"`
	Clusters []ClusterStatus `json:"clusters"`
	// Credentials are the reader tokens in remote secrets: when each
	// expires and when the hub renews it.
	Credentials []CredentialStatus `json:"credentials"`
}

// ClusterStatus is one cluster as observed.
type ClusterStatus struct {
	Name    string          `json:"name"`
	Role    federation.Role `json:"role"`
	Network string          `json:"network"`
	// DataplaneMode is the spec's: sidecar or ambient.
	DataplaneMode deploy.DataplaneMode `json:"dataplaneMode"`
	// ControlPlane is the cluster whose istiod serves this one: itself for
	// a primary or control-plane cluster.
	ControlPlane string `json:"controlPlane,omitempty"`
	// Reachable is false when the cluster could not be read; Error says why.
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	// NetworkLabel is the control-plane namespace's topology.istio.io/network.
	NetworkLabel string `json:"networkLabel,omitempty"`
	// GatewayAddress is the east-west gateway's external address.
	GatewayAddress string `json:"gatewayAddress,omitempty"`
	// AmbientGateway is an ambient cluster's east-west Gateway as found.
	AmbientGateway *AmbientGatewayStatus `json:"ambientGateway,omitempty"`
	// Services maps an ambient cluster's application services
	// (namespace/name) to whether they are global (istio.io/global=true).
	Services map[string]ServiceScope `json:"services,omitempty"`
	// RootFingerprint is the first root in the cluster's cacerts root-cert.pem.
	RootFingerprint        string    `json:"rootFingerprint,omitempty"`
	IntermediateSerial     string    `json:"intermediateSerial,omitempty"`
	IntermediateNotAfter   time.Time `json:"intermediateNotAfter,omitzero"`
	IntermediateChainValid bool      `json:"intermediateChainValid"`
	// CRLSHA256 is the hash of the cacerts' ca-crl.pem ("" without one).
	CRLSHA256 string `json:"crlSHA256,omitempty"`
	// Istio is the Sail Istio resource's global values as found.
	Istio         *IstioStatus         `json:"istio,omitempty"`
	RemoteSecrets []RemoteSecretStatus `json:"remoteSecrets"`
	// MissingRemoteSecrets are the remote secrets the topology asks this
	// cluster to hold that it does not, as namespace/name.
	MissingRemoteSecrets []string `json:"missingRemoteSecrets,omitempty"`
	// MissingTargets are the clusters those missing secrets would read, in
	// the same order (a config-type secret's name does not say).
	MissingTargets []string `json:"missingTargets,omitempty"`
	// Istiods is what the cluster's running istiods report (none in a
	// cluster that runs no istiod).
	Istiods []IstiodView `json:"istiods,omitempty"`
	// Drift lists what differs from the spec and the state.
	Drift []string `json:"drift"`
	// Owner is the hub replica whose reconcile covers the cluster, as the
	// answering replica's ring sees it; empty without replicas.
	Owner string `json:"owner,omitempty"`
}

// IstioStatus is what flotilla checks of a cluster's Sail Istio resource.
type IstioStatus struct {
	Name        string `json:"name"`
	Version     string `json:"version,omitempty"`
	MeshID      string `json:"meshID,omitempty"`
	ClusterName string `json:"clusterName,omitempty"`
	Network     string `json:"network,omitempty"`
	// RemotePilotAddress is global.remotePilotAddress: where a remote's
	// (or a data plane's) webhooks and proxies reach the istiod serving it.
	RemotePilotAddress string `json:"remotePilotAddress,omitempty"`
	// TrustDomain is spec.values.meshConfig.trustDomain; "" is unset
	// (cluster.local).
	TrustDomain string `json:"trustDomain,omitempty"`
}

// RemoteSecretStatus is one remote secret a cluster holds.
type RemoteSecretStatus struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Target is the cluster the secret reads.
	Target   string `json:"target"`
	Expected bool   `json:"expected"`
	// Healthy: the kubeconfig, used as-is, authenticates and may read services.
	Healthy bool   `json:"healthy"`
	Error   string `json:"error,omitempty"`
	// Server and TLSServerName are what the kubeconfig names.
	Server        string `json:"server,omitempty"`
	TLSServerName string `json:"tlsServerName,omitempty"`
	// Path is the way the secret reaches its target's API server: "via
	// gateway <host:port>" (through the target's east-west gateway, by the
	// API server's name) or "direct <server>".
	Path string `json:"path,omitempty"`
}

// Status reads every cluster of m and compares it with m and the state.
func (h *Hub) Status(ctx context.Context, m *spec.Mesh) (*Status, error) {
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	return h.status(ctx, p)
}

func (h *Hub) status(ctx context.Context, p *plan) (*Status, error) {
	root, _, _, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	st := &Status{Mesh: p.Name, Topology: p.Topology, ObservedAt: h.now()}
	if st.Credentials, err = h.credentialStatus(ctx, p); err != nil {
		return nil, fmt.Errorf("state: reader credentials: %w", err)
	}
	if root != nil {
		st.RootFingerprint = pki.Fingerprint(root.Cert)
	}
	if err := h.Store.View(ctx, func(tx *state.Tx) error {
		st.CRL, _, err = crlInfo(tx)
		return err
	}); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if st.CRL != nil {
		st.CRL.Unenforced = crlUnenforced(p)
	}
	conns, connErrs := h.connect(p.Clusters, false)
	plans := p.planned()
	st.Clusters = make([]ClusterStatus, len(p.Layout.Clusters))
	var wg sync.WaitGroup
	for i, mem := range p.Layout.Clusters {
		cs := &st.Clusters[i]
		*cs = ClusterStatus{Name: mem.Name, Role: mem.Role, Network: mem.Network, DataplaneMode: mem.DataplaneMode, ControlPlane: mem.ServedBy, RemoteSecrets: []RemoteSecretStatus{}, Drift: []string{}}
		if err := connErrs[mem.Name]; err != nil {
			cs.Error = err.Error()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.observe(ctx, mem, plans[mem.Name], conns[mem.Name], root, cs)
			if mem.Ambient() && cs.Reachable {
				svcs, err := readServices(ctx, conns[mem.Name], p.systemNamespaces(plans[mem.Name]))
				if err != nil {
					cs.Drift = append(cs.Drift, err.Error())
				}
				cs.Services = svcs
			}
		}()
	}
	wg.Wait()
	for i, mem := range p.Layout.Clusters {
		h.observeConfigCluster(ctx, mem, conns, &st.Clusters[i])
	}
	return st, nil
}

// meshIstiods are the istiods of the mesh among those a cluster runs: the
// one in the namespace of its cacerts. A control-plane cluster also runs
// an istiod of its own in istio-system that serves only its ingress
// gateway, under a CA of its own: not the mesh's, and reading no other
// cluster nor network.
func meshIstiods(place deploy.Placement, views []IstiodView) []IstiodView {
	if place.Role != deploy.RoleControlPlane || !place.HoldsCA() {
		return views
	}
	var out []IstiodView
	for _, v := range views {
		if v.Namespace == place.CANamespace {
			out = append(out, v)
		}
	}
	return out
}

// observeConfigCluster reads what an external istiod publishes where it
// publishes it: in its config cluster (the one its istio-kubeconfig reads),
// not in the cluster it runs in, whose own istiod publishes there.
func (h *Hub) observeConfigCluster(ctx context.Context, place deploy.Placement, conns map[string]*kube.Cluster, cs *ClusterStatus) {
	kc := conns[place.ConfigCluster]
	if place.Role != deploy.RoleControlPlane || place.ConfigCluster == "" || kc == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for i := range cs.Istiods {
		v := &cs.Istiods[i]
		if v.Error != "" {
			continue
		}
		v.Roots, v.SelfSignedCA = nil, false
		if err := readIstiodCA(ctx, kc, v); err != nil {
			v.Error = err.Error()
		}
	}
}

func (h *Hub) observe(ctx context.Context, place deploy.Placement, p gateways.ClusterPlan, kc *kube.Cluster, root *pki.Root, cs *ClusterStatus) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ns := p.Namespace
	nsObj, err := kc.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil && !isNotFound(err) {
		cs.Error = fmt.Sprintf("%s: read namespace %s: %v", kc.Name, ns, err)
		return
	}
	cs.Reachable = true
	if err == nil {
		cs.NetworkLabel = nsObj.Labels[gateways.NetworkLabel]
	}
	if cs.Network != "" && cs.NetworkLabel != cs.Network {
		cs.Drift = append(cs.Drift, fmt.Sprintf("namespace %s: network label %q, want %q", ns, cs.NetworkLabel, cs.Network))
	}
	// The gateway the deploy engine gives the cluster: east-west, or a
	// control-plane cluster's ingress.
	if gw := p.Gateway; gw != nil {
		if addr, ok, err := gateways.LookupAddress(ctx, kc, gw.Namespace, gw.Name); err == nil && ok {
			cs.GatewayAddress = addr.Host
		}
		if gw.Ambient {
			cs.AmbientGateway = readAmbientGateway(ctx, kc, gw)
		}
	}

	// Both PKI modes end in a cacerts: written by flotilla, or projected from
	// cert-manager's intermediate; a data-plane cluster holds none.
	if caNS := place.CANamespace; place.HoldsCA() {
		cc, err := pki.ReadCACerts(ctx, kc, caNS)
		switch {
		case err != nil:
			cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/cacerts: %v", caNS, err))
		case cc == nil:
			cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/cacerts is missing", caNS))
		default:
			h.observeCACerts(cc, root, cs, caNS)
		}
	}

	cs.Istio = readIstio(ctx, kc, place.Istio)
	if views, err := readIstiods(ctx, kc, place.Ambient()); err != nil {
		cs.Drift = append(cs.Drift, err.Error())
	} else {
		cs.Istiods = meshIstiods(place, views)
	}

	// A cluster that reads nothing may still hold secrets: look where it would.
	secretNS := cmp.Or(place.SecretNamespace, p.Namespace)
	expected := map[string]federation.Link{}
	for _, l := range place.Reads {
		expected[federation.SecretName(l.Kind, l.Target)] = l
	}
	list, err := kc.Kube.CoreV1().Secrets(secretNS).List(ctx, metav1.ListOptions{LabelSelector: federation.MultiClusterLabel + "=true"})
	if err != nil {
		cs.Drift = append(cs.Drift, fmt.Sprintf("list remote secrets in %s: %v", secretNS, err))
		return
	}
	found := map[string]bool{}
	for _, s := range list.Items {
		target := s.Annotations[federation.ClusterAnnotation]
		rs := RemoteSecretStatus{Name: s.Name, Namespace: s.Namespace, Target: target}
		_, rs.Expected = expected[s.Name]
		found[s.Name] = true
		for _, data := range s.Data {
			rs.Server, rs.TLSServerName, rs.Path = secretPath(data)
			if err := probeKubeconfig(ctx, data); err != nil {
				rs.Error = err.Error()
			} else {
				rs.Healthy = true
			}
			break
		}
		if !rs.Expected {
			cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/%s reads %q, which the topology does not ask for", s.Namespace, s.Name, target))
		}
		cs.RemoteSecrets = append(cs.RemoteSecrets, rs)
	}
	names := make([]string, 0, len(expected))
	for n := range expected {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !found[n] {
			cs.MissingRemoteSecrets = append(cs.MissingRemoteSecrets, secretNS+"/"+n)
			cs.MissingTargets = append(cs.MissingTargets, expected[n].Target)
			cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/%s (reads %s) is missing", secretNS, n, expected[n].Target))
		}
	}
}

func (h *Hub) observeCACerts(cc *pki.ClusterCACerts, root *pki.Root, cs *ClusterStatus, ns string) {
	info, err := cc.CACerts.Describe()
	if err != nil {
		cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/cacerts: %v", ns, err))
		return
	}
	cs.IntermediateSerial = info.Intermediate.Serial
	cs.IntermediateNotAfter = info.Intermediate.NotAfter
	if len(info.Roots) > 0 {
		cs.RootFingerprint = info.Roots[0].Fingerprint
	}
	cs.IntermediateChainValid = cc.CACerts.Validate(h.now()) == nil
	cs.CRLSHA256 = crlHash(cc.CACerts.CRL)
	if root != nil && cs.RootFingerprint != pki.Fingerprint(root.Cert) {
		cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/cacerts chains to root %s, not the mesh root", ns, short(cs.RootFingerprint)))
	}
	if !cc.Managed {
		cs.Drift = append(cs.Drift, fmt.Sprintf("secret %s/cacerts was not written by flotilla", ns))
	}
}

var sailIstioGVR = schema.GroupVersionResource{Group: "sailoperator.io", Version: "v1", Resource: "istios"}

func readIstio(ctx context.Context, kc *kube.Cluster, name string) *IstioStatus {
	u, err := kc.Dynamic.Resource(sailIstioGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return istioStatus(u)
}

func istioStatus(u *unstructured.Unstructured) *IstioStatus {
	s := &IstioStatus{Name: u.GetName()}
	s.Version, _, _ = unstructured.NestedString(u.Object, "spec", "version")
	s.MeshID, _, _ = unstructured.NestedString(u.Object, "spec", "values", "global", "meshID")
	s.ClusterName, _, _ = unstructured.NestedString(u.Object, "spec", "values", "global", "multiCluster", "clusterName")
	s.Network, _, _ = unstructured.NestedString(u.Object, "spec", "values", "global", "network")
	s.RemotePilotAddress, _, _ = unstructured.NestedString(u.Object, "spec", "values", "global", "remotePilotAddress")
	s.TrustDomain, _, _ = unstructured.NestedString(u.Object, "spec", "values", "meshConfig", "trustDomain")
	return s
}

// secretPath reads the server and TLS server name a remote secret's
// kubeconfig names, and says which path that is: through a gateway when it
// sends the API server's in-cluster name to another address (the way
// flotilla writes a gateway path), else direct.
func secretPath(data []byte) (server, tlsServerName, path string) {
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return "", "", ""
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil {
		return "", "", ""
	}
	c := cfg.Clusters[ctx.Cluster]
	ep := federation.Endpoint{Server: c.Server, TLSServerName: c.TLSServerName}
	if c.TLSServerName == deploy.APIServerSNI {
		if u, err := url.Parse(c.Server); err == nil {
			ep.Gateway = u.Host
		}
	}
	return c.Server, c.TLSServerName, ep.Path()
}

// probeKubeconfig uses a remote secret's kubeconfig as istiod would, and
// asks for what the reader role grants.
func probeKubeconfig(ctx context.Context, data []byte) error {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	// Generous: a loaded API server is slow, not unhealthy.
	cfg.Timeout = 15 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("%s: %w", cfg.Host, err)
	}
	// What istiod cannot sync the cluster without: one rules review says
	// which of those reads the identity lacks. A review that fails says
	// nothing either way (an authorizer that cannot list rules).
	rev, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: metav1.NamespaceDefault},
	}, metav1.CreateOptions{})
	if err != nil || rev.Status.Incomplete {
		return nil
	}
	if missing := federation.MissingDiscoveryReads(rev.Status.ResourceRules); len(missing) > 0 {
		return fmt.Errorf("%s: the secret's identity may not %s (istiod cannot sync the cluster without them)", cfg.Host, strings.Join(missing, ", "))
	}
	return nil
}

func short(fp string) string {
	if len(fp) > 23 {
		return fp[:23] + "…"
	}
	return fp
}
