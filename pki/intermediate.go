package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/helpers"
	"github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
	"k8s.io/apimachinery/pkg/util/validation"
)

// IntermediateKeyUsage is the keyUsage istiod's plug-in CA is given by
// Istio's tooling: digitalSignature, nonRepudiation, keyEncipherment,
// keyCertSign (critical), and cRLSign: once a CA is revoked, istiod and
// Envoy need a CRL from every CA of a chain (see CRLFile).
const IntermediateKeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment |
	x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign | x509.KeyUsageCRLSign

// The same usages in cfssl profile vocabulary.
var intermediateUsages = []string{"digital signature", "content commitment", "key encipherment", "cert sign", "crl sign"}

var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// IstiodDNSName is the SAN of a cluster's intermediate: istiod's service
// name in the control-plane namespace.
func IstiodDNSName(namespace string) string { return "istiod." + namespace + ".svc" }

// Intermediate is one cluster's CA, the signing identity of its istiod.
type Intermediate struct {
	Cluster   string
	Namespace string
	Cert      *x509.Certificate
	CertPEM   []byte
	Key       PrivateKeyPEM
}

// IntermediateRequest is the offline-root half of an intermediate: the key
// stays with flotilla, the CSR goes to whoever holds the root.
type IntermediateRequest struct {
	Cluster   string
	Namespace string
	CSRPEM    []byte
	Key       PrivateKeyPEM
}

// ValidateNames checks the cluster name (a DNS-1123 label: it lands in the
// subject and in Kubernetes object names) and the control-plane namespace.
func ValidateNames(cluster, namespace string) error {
	if errs := validation.IsDNS1123Label(cluster); len(errs) > 0 {
		return fmt.Errorf("%w %q: %s", ErrInvalidClusterName, cluster, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return fmt.Errorf("%w %q: %s", ErrInvalidNamespace, namespace, strings.Join(errs, "; "))
	}
	return nil
}

func intermediateCSR(cluster, namespace string) *csr.CertificateRequest {
	return &csr.CertificateRequest{
		CN:    IntermediateCommonName,
		Names: []csr.Name{{O: Organization, L: cluster}},
		Hosts: []string{IstiodDNSName(namespace)},
		CA:    &csr.CAConfig{PathLenZero: true},
	}
}

// NewIntermediateRequest generates a cluster's intermediate key and a CSR
// carrying the intermediate's subject, SAN and CA:true pathlen:0.
func NewIntermediateRequest(cluster, namespace string, alg KeyAlgorithm) (*IntermediateRequest, error) {
	if err := ValidateNames(cluster, namespace); err != nil {
		return nil, err
	}
	alg, err := ParseKeyAlgorithm(string(alg))
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	priv, keyPEM, err := generateKey(alg)
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	csrPEM, err := csr.Generate(priv, intermediateCSR(cluster, namespace))
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: CSR: %w", cluster, err)
	}
	return &IntermediateRequest{Cluster: cluster, Namespace: namespace, CSRPEM: csrPEM, Key: keyPEM}, nil
}

// IssueIntermediate generates and signs the intermediate CA of cluster,
// whose istiod runs in namespace.
func (r *Root) IssueIntermediate(cluster, namespace string, cfg Config) (*Intermediate, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	req, err := NewIntermediateRequest(cluster, namespace, cfg.KeyAlgorithm)
	if err != nil {
		return nil, err
	}
	certPEM, err := r.SignIntermediateCSR(req.CSRPEM, namespace, cfg.IntermediateLifetime)
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	return LoadIntermediate(cluster, namespace, certPEM, req.Key)
}

// RotateIntermediate issues a fresh intermediate (new key, new serial) for
// old's cluster under the same root and rebuilds its cacerts. Peers keep
// trusting both old and new workload certificates: the root is unchanged.
func (r *Root) RotateIntermediate(old *Intermediate, cfg Config, trust *Bundle) (*Intermediate, CACerts, error) {
	in, err := r.IssueIntermediate(old.Cluster, old.Namespace, cfg)
	if err != nil {
		return nil, CACerts{}, err
	}
	if in.Cert.SerialNumber.Cmp(old.Cert.SerialNumber) == 0 || in.Key.Equal(old.Key) {
		// Serials are 159 random bits; this is a broken RNG, not bad luck.
		return nil, CACerts{}, fmt.Errorf("%s: rotate intermediate: new intermediate repeats the old serial or key", old.Cluster)
	}
	cc, err := NewCACerts(in, r, trust)
	if err != nil {
		return nil, CACerts{}, err
	}
	return in, cc, nil
}

// SignIntermediateCSR signs an intermediate CSR (from NewIntermediateRequest,
// or the manual procedure's openssl) with the root, in the intermediate
// profile: CA:true pathlen:0 critical, the four key usages critical, SKI,
// AKI and SAN DNS istiod.<namespace>.svc. Subject and key come from the
// CSR; the intermediate never outlives the root.
func (r *Root) SignIntermediateCSR(csrPEM []byte, namespace string, lifetime time.Duration) ([]byte, error) {
	if lifetime <= 0 {
		lifetime = DefaultIntermediateLifetime
	}
	priv, err := r.signer()
	if err != nil {
		return nil, err
	}
	if _, err := helpers.ParseCSRPEM(csrPEM); err != nil {
		return nil, fmt.Errorf("%w: certificate request: %v", ErrInvalidPEM, err)
	}
	profile := &config.SigningProfile{
		Usage:        intermediateUsages,
		Expiry:       lifetime,
		ExpiryString: lifetime.String(),
		CAConstraint: config.CAConstraint{IsCA: true, MaxPathLen: 0, MaxPathLenZero: true},
		// cfssl drops DNS SANs from CA certificates; the SAN is put back as
		// an explicit, whitelisted extension.
		ExtensionWhitelist: map[string]bool{oidSubjectAltName.String(): true},
	}
	policy := &config.Signing{
		Profiles: map[string]*config.SigningProfile{"intermediate": profile},
		Default:  &config.SigningProfile{Expiry: lifetime, ExpiryString: lifetime.String()},
	}
	s, err := local.NewSigner(priv, r.Cert, signer.DefaultSigAlgo(priv), policy)
	if err != nil {
		return nil, fmt.Errorf("root signer: %w", err)
	}
	san, err := dnsSAN(IstiodDNSName(namespace))
	if err != nil {
		return nil, err
	}
	notAfter := time.Now().Add(lifetime)
	if notAfter.After(r.Cert.NotAfter) {
		notAfter = r.Cert.NotAfter
	}
	certPEM, err := s.Sign(signer.SignRequest{
		Request: string(csrPEM),
		Profile: "intermediate",
		Extensions: []signer.Extension{{
			ID:    config.OID(oidSubjectAltName),
			Value: hex.EncodeToString(san),
		}},
		NotAfter: notAfter,
	})
	if err != nil {
		return nil, fmt.Errorf("sign intermediate: %w", err)
	}
	return certPEM, nil
}

// dnsSAN encodes a subjectAltName extension value of DNS names.
func dnsSAN(names ...string) ([]byte, error) {
	var raw []asn1.RawValue
	for _, n := range names {
		raw = append(raw, asn1.RawValue{Tag: 2, Class: asn1.ClassContextSpecific, Bytes: []byte(n)})
	}
	b, err := asn1.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("encode subjectAltName: %w", err)
	}
	return b, nil
}

// LoadIntermediate rebuilds an intermediate from stored material, checking
// that the key belongs to the certificate.
func LoadIntermediate(cluster, namespace string, certPEM []byte, key PrivateKeyPEM) (*Intermediate, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	priv, err := key.Signer()
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, err)
	}
	if !keyMatches(priv, cert.PublicKey) {
		return nil, fmt.Errorf("%s: intermediate CA: %w", cluster, ErrKeyMismatch)
	}
	return &Intermediate{Cluster: cluster, Namespace: namespace, Cert: cert, CertPEM: encodeCert(cert), Key: key}, nil
}

// AcceptIntermediate takes back the intermediate an offline root signed for
// req. It must carry req's key, chain to the root in rootPEM, be valid at
// now and have the full intermediate profile and subject.
func AcceptIntermediate(req *IntermediateRequest, signedPEM, rootPEM []byte, now time.Time) (*Intermediate, error) {
	root, err := ImportRootCert(rootPEM, now)
	if err != nil {
		return nil, fmt.Errorf("%s: accept intermediate: %w", req.Cluster, err)
	}
	certs, err := parseCerts(signedPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: accept intermediate: %w", req.Cluster, err)
	}
	cert := certs[0]
	priv, err := req.Key.Signer()
	if err != nil {
		return nil, fmt.Errorf("%s: accept intermediate: %w", req.Cluster, err)
	}
	if !keyMatches(priv, cert.PublicKey) {
		return nil, fmt.Errorf("%s: accept intermediate: %w: the signed certificate is not for this cluster's CSR", req.Cluster, ErrKeyMismatch)
	}
	if err := verifyIntermediate(cert, certs[1:], root.Cert, now); err != nil {
		return nil, fmt.Errorf("%s: accept intermediate: %w", req.Cluster, err)
	}
	if err := CheckIntermediate(cert, req.Cluster, req.Namespace); err != nil {
		return nil, fmt.Errorf("%s: accept intermediate: %w", req.Cluster, err)
	}
	return &Intermediate{Cluster: req.Cluster, Namespace: req.Namespace, Cert: cert, CertPEM: encodeCert(cert), Key: req.Key}, nil
}

// verifyIntermediate checks that cert, with optional chain certificates
// between it and the root, chains to root at now.
func verifyIntermediate(cert *x509.Certificate, between []*x509.Certificate, root *x509.Certificate, now time.Time) error {
	if err := checkCA(cert, now); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range between {
		if !c.Equal(root) {
			inter.AddCert(c)
		}
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("%w (root fingerprint %s): %v", ErrUntrusted, Fingerprint(root), err)
	}
	return nil
}

// CheckIntermediate reports, in one error, every way cert departs from the
// intermediate profile istiod needs. cluster == "" skips the subject check
// (an adopted cacerts may name itself differently and still work).
func CheckIntermediate(cert *x509.Certificate, cluster, namespace string) error {
	var bad []string
	if !cert.BasicConstraintsValid || !cert.IsCA {
		bad = append(bad, "not CA:true")
	} else if cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		bad = append(bad, "pathlen is not 0")
	}
	if critical, ok := extension(cert, oidBasicConstraints); !ok || !critical {
		bad = append(bad, "basicConstraints not critical")
	}
	for _, u := range []struct {
		bit  x509.KeyUsage
		name string
	}{
		{x509.KeyUsageDigitalSignature, "digitalSignature"},
		{x509.KeyUsageContentCommitment, "nonRepudiation"},
		{x509.KeyUsageKeyEncipherment, "keyEncipherment"},
		{x509.KeyUsageCertSign, "keyCertSign"},
	} {
		if cert.KeyUsage&u.bit == 0 {
			bad = append(bad, "keyUsage lacks "+u.name)
		}
	}
	if critical, ok := extension(cert, oidKeyUsage); !ok || !critical {
		bad = append(bad, "keyUsage not critical")
	}
	if len(cert.SubjectKeyId) == 0 {
		bad = append(bad, "no subjectKeyIdentifier")
	}
	if want := IstiodDNSName(namespace); !slices.Contains(cert.DNSNames, want) {
		bad = append(bad, "SAN lacks DNS:"+want)
	}
	if cluster != "" {
		s := cert.Subject
		if !slices.Equal(s.Organization, []string{Organization}) || s.CommonName != IntermediateCommonName ||
			!slices.Equal(s.Locality, []string{cluster}) {
			bad = append(bad, fmt.Sprintf("subject is %q, want O=%s, CN=%s, L=%s", s.String(), Organization, IntermediateCommonName, cluster))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrProfile, strings.Join(bad, "; "))
	}
	return nil
}

// extension reports whether cert carries oid and whether it is critical.
func extension(cert *x509.Certificate, oid asn1.ObjectIdentifier) (critical, ok bool) {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical, true
		}
	}
	return false, false
}

// signer parses in's key, checked against its certificate.
func (in *Intermediate) signer() (crypto.Signer, error) {
	priv, err := in.Key.Signer()
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate key: %w", in.Cluster, err)
	}
	if !keyMatches(priv, in.Cert.PublicKey) {
		return nil, fmt.Errorf("%s: intermediate key: %w", in.Cluster, ErrKeyMismatch)
	}
	return priv, nil
}
