package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The four keys of istiod's plug-in CA Secret and of the exported files.
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	RootCertFile  = "root-cert.pem"
	CertChainFile = "cert-chain.pem"
)

// CACertsFiles lists the four keys in the order the manual procedure names them.
var CACertsFiles = []string{CACertFile, CAKeyFile, RootCertFile, CertChainFile}

// CACerts is the content of one cluster's `cacerts` Secret.
type CACerts struct {
	CACert    []byte        `json:"caCert"`    // ca-cert.pem: the cluster's intermediate
	CAKey     PrivateKeyPEM `json:"caKey"`     // ca-key.pem: its key (always redacted in JSON)
	RootCert  []byte        `json:"rootCert"`  // root-cert.pem: the root, or the trust bundle
	CertChain []byte        `json:"certChain"` // cert-chain.pem: intermediate, then root
	// CRL is ca-crl.pem, optional: written once the mesh has revoked a CA.
	CRL []byte `json:"crl,omitempty"`
}

// NewCACerts assembles a cluster's cacerts: in must chain to root;
// root-cert.pem is trust when given (a bundle must include root), else root.
func NewCACerts(in *Intermediate, root *Root, trust *Bundle) (CACerts, error) {
	if err := verifyIntermediate(in.Cert, nil, root.Cert, time.Now()); err != nil {
		return CACerts{}, fmt.Errorf("%s: cacerts: %w", in.Cluster, err)
	}
	rootPEM := root.CertPEM
	if trust != nil {
		if !trust.Contains(root.Cert) {
			return CACerts{}, fmt.Errorf("%s: cacerts: %w: trust bundle lacks the issuing root %s", in.Cluster, ErrUntrusted, Fingerprint(root.Cert))
		}
		rootPEM = trust.PEM()
	}
	chain := append(encodeCert(in.Cert), encodeCert(root.Cert)...)
	return CACerts{CACert: encodeCert(in.Cert), CAKey: in.Key, RootCert: rootPEM, CertChain: chain}, nil
}

// ParseCACerts reads the four keys of a Secret's data (or exported files);
// a missing or empty key is ErrInvalidCACerts. Content is checked by Validate.
func ParseCACerts(data map[string][]byte) (CACerts, error) {
	var missing []string
	for _, k := range CACertsFiles {
		if len(data[k]) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return CACerts{}, fmt.Errorf("%w: missing %s", ErrInvalidCACerts, strings.Join(missing, ", "))
	}
	return CACerts{
		CACert:    bytes.Clone(data[CACertFile]),
		CAKey:     NewPrivateKeyPEM(data[CAKeyFile]),
		RootCert:  bytes.Clone(data[RootCertFile]),
		CertChain: bytes.Clone(data[CertChainFile]),
		CRL:       bytes.Clone(data[CRLFile]),
	}, nil
}

// SecretData returns the four keys (five with a CRL) with the raw key
// bytes, for the Secret and the export only.
func (cc CACerts) SecretData() map[string][]byte {
	data := map[string][]byte{
		CACertFile:    bytes.Clone(cc.CACert),
		CAKeyFile:     cc.CAKey.Reveal(),
		RootCertFile:  bytes.Clone(cc.RootCert),
		CertChainFile: bytes.Clone(cc.CertChain),
	}
	if len(cc.CRL) > 0 {
		data[CRLFile] = bytes.Clone(cc.CRL)
	}
	return data
}

// Equal reports whether both hold exactly the same bytes in every key.
func (cc CACerts) Equal(o CACerts) bool {
	return bytes.Equal(cc.CACert, o.CACert) && cc.CAKey.Equal(o.CAKey) &&
		bytes.Equal(cc.RootCert, o.RootCert) && bytes.Equal(cc.CertChain, o.CertChain) &&
		bytes.Equal(cc.CRL, o.CRL)
}

// Validate checks the cacerts as istiod will use them at now: the key
// matches ca-cert.pem, cert-chain.pem starts with ca-cert.pem, and the
// intermediate chains (through cert-chain.pem) to a root of root-cert.pem.
func (cc CACerts) Validate(now time.Time) error {
	cert, err := parseCert(cc.CACert)
	if err != nil {
		return fmt.Errorf("%s: %w", CACertFile, err)
	}
	priv, err := cc.CAKey.Signer()
	if err != nil {
		return fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	if !keyMatches(priv, cert.PublicKey) {
		return fmt.Errorf("%s and %s: %w", CAKeyFile, CACertFile, ErrKeyMismatch)
	}
	chain, err := parseCerts(cc.CertChain)
	if err != nil {
		return fmt.Errorf("%s: %w", CertChainFile, err)
	}
	if !chain[0].Equal(cert) {
		return fmt.Errorf("%w: %s does not start with %s", ErrInvalidCACerts, CertChainFile, CACertFile)
	}
	trust, err := ParseBundle(cc.RootCert)
	if err != nil {
		return fmt.Errorf("%s: %w", RootCertFile, err)
	}
	if err := checkCA(cert, now); err != nil {
		return fmt.Errorf("%s: %w", CACertFile, err)
	}
	if _, err := trust.Verify(chain, now, ""); err != nil {
		return fmt.Errorf("%s: %w", CertChainFile, err)
	}
	if len(cc.CRL) > 0 {
		crls, err := ParseCRLs(cc.CRL)
		if err != nil {
			return fmt.Errorf("%s: %w", CRLFile, err)
		}
		if err := CheckChainCRLs(chain, crls); err != nil {
			return err
		}
		for _, c := range chain[1:] {
			if crl := CRLFrom(crls, c); crl != nil && Revokes(crl, cert.SerialNumber) {
				return fmt.Errorf("%s: %w: %s lists the intermediate (serial %s)", CACertFile, ErrRevoked, CRLFile, colonHex(cert.SerialNumber.Bytes()))
			}
		}
	}
	return nil
}

// Intermediate parses ca-cert.pem and ca-key.pem into the cluster's
// intermediate (after adopting a cacerts, for instance).
func (cc CACerts) Intermediate(cluster, namespace string) (*Intermediate, error) {
	return LoadIntermediate(cluster, namespace, cc.CACert, cc.CAKey)
}

// Roots parses root-cert.pem.
func (cc CACerts) Roots() (*Bundle, error) { return ParseBundle(cc.RootCert) }

// WriteFiles writes the four files into dir as the manual procedure leaves
// them (`make -f Makefile.selfsigned.mk <cluster>-cacerts`), ready for
// `kubectl create secret generic cacerts --from-file`. The key is created
// 0600 and never exists on disk with wider permissions.
func (cc CACerts) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export cacerts: %w", err)
	}
	data := cc.SecretData()
	names := CACertsFiles
	if len(cc.CRL) > 0 {
		names = append(slices.Clone(names), CRLFile)
	}
	for _, name := range names {
		mode := os.FileMode(0o644)
		if name == CAKeyFile {
			mode = 0o600
		}
		if err := writeFileAtomic(filepath.Join(dir, name), data[name], mode); err != nil {
			return fmt.Errorf("export cacerts: %w", err)
		}
	}
	return nil
}

// writeFileAtomic writes through a temporary file created with mode, so a
// reader never sees a partial file and a previous, looser file is replaced
// rather than rewritten in place.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CertInfo is what `flotilla ca show` prints of a certificate.
type CertInfo struct {
	Subject      string    `json:"subject"`
	Issuer       string    `json:"issuer"`
	Serial       string    `json:"serial"`
	Fingerprint  string    `json:"sha256Fingerprint"`
	KeyAlgorithm string    `json:"keyAlgorithm"`
	IsCA         bool      `json:"isCA"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
}

// Describe summarises cert.
func Describe(cert *x509.Certificate) CertInfo {
	return CertInfo{
		Subject:      cert.Subject.String(),
		Issuer:       cert.Issuer.String(),
		Serial:       colonHex(cert.SerialNumber.Bytes()),
		Fingerprint:  Fingerprint(cert),
		KeyAlgorithm: algorithmOf(cert.PublicKey),
		IsCA:         cert.IsCA,
		NotBefore:    cert.NotBefore.UTC(),
		NotAfter:     cert.NotAfter.UTC(),
	}
}

// CACertsInfo describes a cacerts without its key.
type CACertsInfo struct {
	Intermediate CertInfo   `json:"intermediate"`
	Roots        []CertInfo `json:"roots"`
}

// Describe summarises the intermediate and the roots of cc.
func (cc CACerts) Describe() (CACertsInfo, error) {
	cert, err := parseCert(cc.CACert)
	if err != nil {
		return CACertsInfo{}, fmt.Errorf("%s: %w", CACertFile, err)
	}
	roots, err := ParseBundle(cc.RootCert)
	if err != nil {
		return CACertsInfo{}, fmt.Errorf("%s: %w", RootCertFile, err)
	}
	info := CACertsInfo{Intermediate: Describe(cert)}
	for _, r := range roots.Roots {
		info.Roots = append(info.Roots, Describe(r))
	}
	return info, nil
}

// Fingerprint is the SHA-256 of the certificate's DER, as lowercase
// colon-separated hex (openssl x509 -fingerprint -sha256, lowercased).
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return colonHex(sum[:])
}

func colonHex(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	var sb strings.Builder
	for i, c := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02x", c)
	}
	return sb.String()
}
