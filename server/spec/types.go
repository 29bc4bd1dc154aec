// Package spec is the mesh spec: the one document (kind Mesh) that says which
// clusters form a mesh, in which topology, and with which root of trust. It is
// parsed strictly (unknown fields and wrong types are errors with their line)
// and validated as a whole, so that apply never starts on a spec it would have
// to abandon halfway.
package spec

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
)

// APIVersion and Kind identify a mesh spec document.
const (
	APIVersion = "flotilla.dev/v1alpha1"
	Kind       = "Mesh"
)

// Defaults, as Istio's own tooling chooses them where it has an opinion.
const (
	DefaultTrustDomain           = "cluster.local"
	DefaultControlPlaneNamespace = "istio-system"
	DefaultKeyAlgorithm          = RSA4096
	DefaultRootTTL               = 87600 * time.Hour  // 10 years
	DefaultIntermediateTTL       = 17520 * time.Hour  // 2 years
	DefaultTokenTTL              = 7 * 24 * time.Hour // 7 days: renewed at half life, rotated without a gap
	DefaultIssuerKind            = "Issuer"
	DefaultIssuerGroup           = "cert-manager.io"
)

// MinTokenTTL is the shortest expiration the Kubernetes TokenRequest API accepts.
const MinTokenTTL = 10 * time.Minute

// Mesh is a mesh spec document.
type Mesh struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       MeshSpec `yaml:"spec" json:"spec"`

	// lines maps a field path ("spec.clusters[1].name") to the line it was
	// read from, so that validation problems point into the file.
	lines map[string]int
	// validHash is the Hash of the content Parse or Validate last found
	// valid: a request validates its spec once (ValidatedAs).
	validHash string
}

// Metadata names the mesh.
type Metadata struct {
	Name string `yaml:"name" json:"name"`
}

// MeshSpec is the desired state of the mesh.
type MeshSpec struct {
	// MeshID is Istio's global.meshID; defaults to metadata.name.
	MeshID      string `yaml:"meshID" json:"meshID"`
	TrustDomain string `yaml:"trustDomain" json:"trustDomain"`
	// Topology is required: it decides which roles clusters may have.
	Topology              federation.Topology `yaml:"topology" json:"topology"`
	ControlPlaneNamespace string              `yaml:"controlPlaneNamespace" json:"controlPlaneNamespace"`
	// DataplaneMode is how workloads join the mesh (sidecar, the default,
	// or ambient); a cluster may say otherwise where Istio supports a
	// mixed mesh.
	DataplaneMode deploy.DataplaneMode `yaml:"dataplaneMode" json:"dataplaneMode,omitempty"`
	Istio         Istio                `yaml:"istio" json:"istio"`
	PKI           PKI                  `yaml:"pki" json:"pki"`
	Federation    Federation           `yaml:"federation" json:"federation"`
	Clusters      []Cluster            `yaml:"clusters" json:"clusters"`
	// AllowLoopbackAPIServers accepts API server addresses on 127.0.0.0/8 or
	// ::1 in remote secrets: only useful when every cluster runs on one host
	// (the lab), since elsewhere another cluster cannot reach them.
	AllowLoopbackAPIServers bool `yaml:"allowLoopbackAPIServers" json:"allowLoopbackAPIServers"`
}

// Istio selects the Istio release the control planes run.
type Istio struct {
	Version string `yaml:"version" json:"version,omitempty"`
}

// PKIMode is who signs the clusters' intermediates and workload certificates.
type PKIMode string

const (
	// PKIBuiltin: the hub holds the root and writes cacerts in every cluster.
	PKIBuiltin PKIMode = "builtin"
	// PKICertManager: cert-manager signs, in the style of istio-csr.
	PKICertManager PKIMode = "cert-manager"
)

// PKIModes lists the valid modes.
func PKIModes() []PKIMode { return []PKIMode{PKIBuiltin, PKICertManager} }

// KeyAlgorithm is the key type of the root and intermediates.
type KeyAlgorithm string

const (
	RSA4096   KeyAlgorithm = "RSA-4096"
	RSA2048   KeyAlgorithm = "RSA-2048"
	ECDSAP256 KeyAlgorithm = "ECDSA-P256"
)

// KeyAlgorithms lists the valid key algorithms, the default first.
func KeyAlgorithms() []KeyAlgorithm { return []KeyAlgorithm{RSA4096, RSA2048, ECDSAP256} }

// PKI is the mesh's root of trust and how intermediates are issued.
type PKI struct {
	Mode            PKIMode      `yaml:"mode" json:"mode"`
	KeyAlgorithm    KeyAlgorithm `yaml:"keyAlgorithm" json:"keyAlgorithm"`
	RootTTL         Duration     `yaml:"rootTTL" json:"rootTTL"`
	IntermediateTTL Duration     `yaml:"intermediateTTL" json:"intermediateTTL"`
	// Root brings an existing root instead of generating one.
	Root *RootSource `yaml:"root" json:"root,omitempty"`
	// Offline keeps the root key away from the hub: flotilla emits one CSR per
	// cluster and accepts the signed intermediates back.
	Offline     bool         `yaml:"offline" json:"offline,omitempty"`
	CertManager *CertManager `yaml:"certManager" json:"certManager,omitempty"`
}

// RootSource is a root CA given as files. KeyFile is empty for an offline root.
type RootSource struct {
	CertFile string `yaml:"certFile" json:"certFile"`
	KeyFile  string `yaml:"keyFile" json:"keyFile,omitempty"`
}

// CertManager configures cert-manager mode.
type CertManager struct {
	// IssuerRef names the issuer that signs; without it the hub's root signs.
	IssuerRef *IssuerRef `yaml:"issuerRef" json:"issuerRef,omitempty"`
	// CSRAgent runs flotilla's istio-csr style signer in every cluster and
	// points istiod and the proxies at it (global.caAddress, istiod's own CA
	// off). Without it istiod keeps signing with the cacerts projected from
	// cert-manager's intermediate.
	CSRAgent *CSRAgent `yaml:"csrAgent" json:"csrAgent,omitempty"`
}

// CSRAgent configures the in-cluster csr-agent.
type CSRAgent struct {
	// Image runs `flotilla csr-agent`.
	Image string `yaml:"image" json:"image"`
}

// IssuerRef is a cert-manager issuer reference.
type IssuerRef struct {
	Name  string `yaml:"name" json:"name"`
	Kind  string `yaml:"kind" json:"kind"`
	Group string `yaml:"group" json:"group"`
}

// Federation configures how clusters read each other.
type Federation struct {
	// TokenTTL is the lifetime of minted reader tokens; they are renewed before.
	TokenTTL Duration `yaml:"tokenTTL" json:"tokenTTL"`
	// LegacyTokenSecret uses a kubernetes.io/service-account-token Secret
	// (a token that never expires) instead of TokenRequest, as istioctl does.
	LegacyTokenSecret bool `yaml:"legacyTokenSecret" json:"legacyTokenSecret,omitempty"`
}

// Cluster is one member cluster.
type Cluster struct {
	Name string `yaml:"name" json:"name"`
	// Context is the kubeconfig context flotilla uses to reach the cluster.
	Context string `yaml:"context" json:"context"`
	// Kubeconfig is a kubeconfig file for this cluster only; "" means the
	// kubeconfig flotilla was given.
	Kubeconfig string `yaml:"kubeconfig" json:"kubeconfig,omitempty"`
	Network    string `yaml:"network" json:"network"`
	// APIServer is the URL other clusters use to read this one, when the one
	// in the kubeconfig is not reachable from them.
	APIServer string `yaml:"apiServer" json:"apiServer,omitempty"`
	// APIServerAccess is how the clusters that read this one reach its API
	// server: direct (the default: apiServer, else the kubeconfig's
	// address) or gateway (through this cluster's east-west gateway, for a
	// private API server).
	APIServerAccess deploy.APIServerAccess `yaml:"apiServerAccess" json:"apiServerAccess,omitempty"`
	Role            federation.Role        `yaml:"role" json:"role"`
	// DataplaneMode is this cluster's; "" takes the mesh's.
	DataplaneMode deploy.DataplaneMode `yaml:"dataplaneMode" json:"dataplaneMode,omitempty"`
	// ControlPlane names the cluster whose istiod serves a remote or data-plane cluster.
	ControlPlane string  `yaml:"controlPlane" json:"controlPlane,omitempty"`
	Gateway      Gateway `yaml:"gateway" json:"gateway"`
}

// ServiceType is the Service type of a cluster's east-west gateway.
type ServiceType string

const (
	LoadBalancer ServiceType = "LoadBalancer"
	NodePort     ServiceType = "NodePort"
	ClusterIP    ServiceType = "ClusterIP"
)

// ServiceTypes lists the valid gateway Service types, the default first.
func ServiceTypes() []ServiceType { return []ServiceType{LoadBalancer, NodePort, ClusterIP} }

// Gateway configures a cluster's east-west gateway.
type Gateway struct {
	ServiceType ServiceType `yaml:"serviceType" json:"serviceType"`
	// Address is a fixed address (IP or DNS name) other clusters reach the
	// gateway at, for clusters without a load balancer.
	Address  string `yaml:"address" json:"address,omitempty"`
	NodePort int32  `yaml:"nodePort" json:"nodePort,omitempty"`
}

// Duration is a Go duration ("8760h") in the spec.
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as Go prints it ("8760h0m0s").
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Cluster returns the cluster called name.
func (m *Mesh) Cluster(name string) (*Cluster, bool) {
	for i := range m.Spec.Clusters {
		if m.Spec.Clusters[i].Name == name {
			return &m.Spec.Clusters[i], true
		}
	}
	return nil, false
}

// Members is the clusters as the topology sees them (roles defaulted).
func (m *Mesh) Members() []federation.Member {
	out := make([]federation.Member, 0, len(m.Spec.Clusters))
	for _, c := range m.Spec.Clusters {
		role := c.Role
		if role == "" {
			role = federation.RolePrimary
		}
		mode := c.DataplaneMode
		if mode == "" {
			mode = m.Spec.DataplaneMode
		}
		out = append(out, federation.Member{Name: c.Name, Role: role, Network: c.Network, ControlPlane: c.ControlPlane, APIServerAccess: c.APIServerAccess, DataplaneMode: mode})
	}
	return out
}

// Line returns the line a field path was read from, 0 when unknown.
func (m *Mesh) Line(path string) int { return m.lines[path] }
