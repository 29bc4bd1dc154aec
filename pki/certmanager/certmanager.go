// Package certmanager is flotilla's cert-manager mode: instead of signing a
// cluster's intermediate itself, flotilla writes the cert-manager objects
// that make cert-manager issue it under the mesh's one root, projects the
// issued intermediate into istiod's `cacerts` Secret, and follows
// cert-manager's renewals.
//
// Per cluster, in the control-plane namespace:
//
//	MeshIssuer  flotilla-mesh        issuer.flotilla.dev: the hub signs (only when no RootIssuer is named)
//	Certificate flotilla-intermediate  isCA, the intermediate profile, Secret flotilla-intermediate-ca
//	Issuer  flotilla-workload       CA issuer on the intermediate, for workload signing (csr-agent)
//
// The root key never enters a member cluster: the hub is a cert-manager
// external issuer (pki/issuer) and signs the intermediate's
// CertificateRequest through its connection. Earlier versions wrote the
// root as Secret flotilla-root-ca behind a CA Issuer flotilla-root; Apply
// deletes both.
//
// Profile gap with a user's RootIssuer only: a cert-manager Certificate
// cannot ask for a path length, and cert-manager's CA issuer adds none,
// so such an intermediate lacks pathlen:0. The hub issuer adds it.
// Subject (O=Istio, CN=Intermediate CA, L=<cluster>), SAN DNS
// istiod.<ns>.svc, the four key usages (critical) and the
// subjectKeyIdentifier match the built-in profile; CheckProfile says so.
package certmanager

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// Names of the objects flotilla writes in the control-plane namespace.
const (
	// MeshIssuerName is the hub's MeshIssuer.
	MeshIssuerName = "flotilla-mesh"
	// RootSecretName and RootIssuerName are what earlier versions wrote
	// (the root key in the cluster); Apply deletes them.
	RootSecretName              = "flotilla-root-ca"
	RootIssuerName              = "flotilla-root"
	IntermediateCertificateName = "flotilla-intermediate"
	IntermediateSecretName      = "flotilla-intermediate-ca"
	WorkloadIssuerName          = "flotilla-workload"
)

// Kinds of issuer a Certificate or CertificateRequest can name.
const (
	IssuerKind        = "Issuer"
	ClusterIssuerKind = "ClusterIssuer"
	Group             = "cert-manager.io"
)

// DefaultRenewBefore renews the intermediate a month before it expires.
const DefaultRenewBefore = 30 * 24 * time.Hour

var (
	// ErrCRDsMissing: the cluster does not serve cert-manager.io/v1.
	ErrCRDsMissing = errors.New("cert-manager CRDs are not installed")
	// ErrIssuerNotFound: the named Issuer or ClusterIssuer does not exist.
	ErrIssuerNotFound = errors.New("issuer does not exist")
	// ErrNotIssued: the intermediate's Secret is missing or incomplete.
	ErrNotIssued = errors.New("intermediate not issued yet")
)

// GVKs of the cert-manager kinds flotilla reads and writes.
var (
	CertificateGVK        = cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateKind)
	CertificateRequestGVK = cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateRequestKind)
	IssuerGVK             = cmapi.SchemeGroupVersion.WithKind(cmapi.IssuerKind)
	ClusterIssuerGVK      = cmapi.SchemeGroupVersion.WithKind(cmapi.ClusterIssuerKind)
)

// IssuerRef names an Issuer (in the control-plane namespace) or a
// ClusterIssuer.
type IssuerRef struct {
	Name string `json:"name"`
	// Kind is Issuer (the default) or ClusterIssuer.
	Kind string `json:"kind,omitempty"`
	// Group is cert-manager.io ("") or issuer.flotilla.dev (the hub).
	Group string `json:"group,omitempty"`
}

func (r IssuerRef) kind() string {
	if r.Kind == "" {
		return IssuerKind
	}
	return r.Kind
}

// String is "Issuer ns/name" or "ClusterIssuer name".
func (r IssuerRef) String() string {
	return r.kind() + " " + r.Name
}

func (r IssuerRef) validate() error {
	if r.Name == "" {
		return errors.New("issuer reference has no name")
	}
	if r.Group != "" && r.Group != Group {
		return fmt.Errorf("issuer %s: group %q: a named root issuer is cert-manager's (%s)", r.Name, r.Group, Group)
	}
	if k := r.kind(); k != IssuerKind && k != ClusterIssuerKind {
		return fmt.Errorf("issuer %s: kind %q is neither %s nor %s", r.Name, k, IssuerKind, ClusterIssuerKind)
	}
	return nil
}

func (r IssuerRef) meta() cmmeta.IssuerReference {
	g := r.Group
	if g == "" {
		g = Group
	}
	return cmmeta.IssuerReference{Name: r.Name, Kind: r.kind(), Group: g}
}

// Config is one cluster's cert-manager mode.
type Config struct {
	// Cluster is the cluster's name: errors name it, and it is the
	// intermediate's L=.
	Cluster string
	// Namespace is the control-plane namespace (istio-system).
	Namespace string
	// KeyAlgorithm of the intermediate; "" is ECDSA-P256, cert-manager's
	// own default and much cheaper to renew than RSA-4096.
	KeyAlgorithm pki.KeyAlgorithm
	// Lifetime of the intermediate; 0 is pki.DefaultIntermediateLifetime.
	Lifetime time.Duration
	// RenewBefore; 0 is DefaultRenewBefore (capped to a third of Lifetime).
	RenewBefore time.Duration
	// RootIssuer names an existing Issuer or ClusterIssuer (fronting an
	// external PKI) that signs the intermediate. nil: the hub signs, as
	// MeshIssuer flotilla-mesh.
	RootIssuer *IssuerRef
	// Mesh is the mesh's name, for the MeshIssuer's spec.
	Mesh string
}

func (c Config) withDefaults() (Config, error) {
	if err := pki.ValidateNames(c.Cluster, c.Namespace); err != nil {
		return c, err
	}
	if c.KeyAlgorithm == "" {
		c.KeyAlgorithm = pki.ECDSAP256
	}
	alg, err := pki.ParseKeyAlgorithm(string(c.KeyAlgorithm))
	if err != nil {
		return c, fmt.Errorf("%s: cert-manager intermediate: %w", c.Cluster, err)
	}
	c.KeyAlgorithm = alg
	if c.Lifetime == 0 {
		c.Lifetime = pki.DefaultIntermediateLifetime
	}
	if c.RenewBefore == 0 {
		c.RenewBefore = min(DefaultRenewBefore, c.Lifetime/3)
	}
	if c.Lifetime < time.Hour || c.RenewBefore <= 0 || c.RenewBefore >= c.Lifetime {
		return c, fmt.Errorf("%s: cert-manager intermediate: lifetime %s and renewBefore %s: want lifetime >= 1h and 0 < renewBefore < lifetime", c.Cluster, c.Lifetime, c.RenewBefore)
	}
	if c.RootIssuer != nil {
		if err := c.RootIssuer.validate(); err != nil {
			return c, fmt.Errorf("%s: %w", c.Cluster, err)
		}
	}
	return c, nil
}

// rootIssuer is the issuer that signs the intermediate.
func (c Config) rootIssuer() IssuerRef {
	if c.RootIssuer != nil {
		return *c.RootIssuer
	}
	return IssuerRef{Name: MeshIssuerName, Kind: v1alpha1.MeshIssuerKind, Group: v1alpha1.Group}
}

// WorkloadIssuer is the issuer that signs workload certificates with the
// cluster's intermediate: what csr-agent's CertificateRequests name.
func WorkloadIssuer() IssuerRef { return IssuerRef{Name: WorkloadIssuerName, Kind: IssuerKind} }

func keySpec(alg pki.KeyAlgorithm) *cmapi.CertificatePrivateKey {
	pk := &cmapi.CertificatePrivateKey{
		// PKCS#8, as pki stores keys: one encoding whatever the algorithm.
		Encoding: cmapi.PKCS8,
		// A renewal gets a new key, as flotilla's own rotation does.
		RotationPolicy: cmapi.RotationPolicyAlways,
	}
	switch alg {
	case pki.ECDSAP256:
		pk.Algorithm, pk.Size = cmapi.ECDSAKeyAlgorithm, 256
	case pki.RSA2048:
		pk.Algorithm, pk.Size = cmapi.RSAKeyAlgorithm, 2048
	default:
		pk.Algorithm, pk.Size = cmapi.RSAKeyAlgorithm, 4096
	}
	return pk
}

// IntermediateCertificate is the Certificate cert-manager issues the
// cluster's intermediate from.
func IntermediateCertificate(cfg Config) (*unstructured.Unstructured, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	crt := &cmapi.Certificate{
		TypeMeta:   metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: cmapi.CertificateKind},
		ObjectMeta: objectMeta(IntermediateCertificateName, cfg.Namespace),
		Spec: cmapi.CertificateSpec{
			CommonName: pki.IntermediateCommonName,
			Subject: &cmapi.X509Subject{
				Organizations: []string{pki.Organization},
				Localities:    []string{cfg.Cluster},
			},
			DNSNames:    []string{pki.IstiodDNSName(cfg.Namespace)},
			Duration:    &metav1.Duration{Duration: cfg.Lifetime},
			RenewBefore: &metav1.Duration{Duration: cfg.RenewBefore},
			SecretName:  IntermediateSecretName,
			IsCA:        true,
			Usages: []cmapi.KeyUsage{
				cmapi.UsageDigitalSignature, cmapi.UsageContentCommitment,
				cmapi.UsageKeyEncipherment, cmapi.UsageCertSign,
			},
			PrivateKey: keySpec(cfg.KeyAlgorithm),
			IssuerRef:  cfg.rootIssuer().meta(),
			SecretTemplate: &cmapi.CertificateSecretTemplate{
				Labels: map[string]string{pki.ManagedByLabel: pki.ManagedByValue},
			},
		},
	}
	return toUnstructured(crt)
}

// Objects are the cert-manager objects of cfg, in apply order. None holds
// a private key: the hub's MeshIssuer stands for the root.
func Objects(cfg Config) ([]*unstructured.Unstructured, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	if cfg.RootIssuer == nil {
		out = append(out, meshIssuer(cfg))
	}
	crt, err := IntermediateCertificate(cfg)
	if err != nil {
		return nil, err
	}
	wl, err := caIssuer(WorkloadIssuerName, cfg.Namespace, IntermediateSecretName)
	if err != nil {
		return nil, err
	}
	return append(out, crt, wl), nil
}

// meshIssuer is the MeshIssuer standing for the hub in cfg's namespace.
func meshIssuer(cfg Config) *unstructured.Unstructured {
	spec := map[string]any{"cluster": cfg.Cluster}
	if cfg.Mesh != "" {
		spec["mesh"] = cfg.Mesh
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(),
		"kind":       v1alpha1.MeshIssuerKind,
		"metadata": map[string]any{
			"name": MeshIssuerName, "namespace": cfg.Namespace,
			"labels": map[string]any{pki.ManagedByLabel: pki.ManagedByValue},
		},
		"spec": spec,
	}}
}

func caIssuer(name, namespace, secret string) (*unstructured.Unstructured, error) {
	return toUnstructured(&cmapi.Issuer{
		TypeMeta:   metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: cmapi.IssuerKind},
		ObjectMeta: objectMeta(name, namespace),
		Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{
			CA: &cmapi.CAIssuer{SecretName: secret},
		}},
	})
}

func objectMeta(name, namespace string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{pki.ManagedByLabel: pki.ManagedByValue}}
}

// toUnstructured drops what a typed object carries but an apply must not
// send: an empty status and a null creationTimestamp.
func toUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u, nil
}

// CheckProfile reports how an intermediate issued by cert-manager departs
// from the built-in profile, leaving out the one known gap (pathlen:0,
// which a Certificate cannot request). It is pki.CheckIntermediate without
// the pathlen line.
func CheckProfile(cert *x509.Certificate, cluster, namespace string) error {
	err := pki.CheckIntermediate(cert, cluster, namespace)
	if err == nil {
		return nil
	}
	var rest []string
	for _, p := range strings.Split(strings.TrimPrefix(err.Error(), pki.ErrProfile.Error()+": "), "; ") {
		if p != "pathlen is not 0" {
			rest = append(rest, p)
		}
	}
	if len(rest) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", pki.ErrProfile, strings.Join(rest, "; "))
}

// gvkOf maps an issuer kind to its GVK.
func gvkOf(kind string) schema.GroupVersionKind {
	if kind == ClusterIssuerKind {
		return ClusterIssuerGVK
	}
	return IssuerGVK
}

// requiredKinds are the kinds cert-manager mode cannot work without.
var requiredKinds = []string{cmapi.CertificateKind, cmapi.CertificateRequestKind, cmapi.IssuerKind, cmapi.ClusterIssuerKind}

func missingKinds(served []metav1.APIResource) []string {
	var missing []string
	for _, k := range requiredKinds {
		if !slices.ContainsFunc(served, func(r metav1.APIResource) bool { return r.Kind == k }) {
			missing = append(missing, k)
		}
	}
	return missing
}
