// Package pki is flotilla's built-in certificate authority: one root per
// mesh, one intermediate CA per cluster in exactly the profile istiod
// expects of a plug-in CA, the `cacerts` Secret that carries it, and the
// workload-certificate and chain-verification primitives later parts of
// flotilla build on. Certificates are made with cfssl; private keys travel
// only as PrivateKeyPEM, which never prints.
package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/initca"
	cfssllog "github.com/cloudflare/cfssl/log"
)

func init() {
	// cfssl logs every CSR and signature at info level to stderr; that
	// would interleave with the CLI's own output. Warnings still show.
	cfssllog.Level = cfssllog.LevelWarning
}

// Lifetimes of Istio's own tooling (tools/certs/common.mk).
const (
	DefaultRootLifetime         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateLifetime = 2 * 365 * 24 * time.Hour
)

// Subject fields of the profile in the brief.
const (
	Organization           = "Istio"
	RootCommonName         = "Root CA"
	IntermediateCommonName = "Intermediate CA"
)

// Config is the mesh spec's pki section as this package needs it.
// Zero values mean the defaults.
type Config struct {
	KeyAlgorithm         KeyAlgorithm
	RootLifetime         time.Duration
	IntermediateLifetime time.Duration
}

func (c Config) withDefaults() (Config, error) {
	alg, err := ParseKeyAlgorithm(string(c.KeyAlgorithm))
	if err != nil {
		return c, err
	}
	c.KeyAlgorithm = alg
	if c.RootLifetime == 0 {
		c.RootLifetime = DefaultRootLifetime
	}
	if c.IntermediateLifetime == 0 {
		c.IntermediateLifetime = DefaultIntermediateLifetime
	}
	if c.RootLifetime < 0 || c.IntermediateLifetime < 0 {
		return c, fmt.Errorf("negative certificate lifetime (root %s, intermediate %s)", c.RootLifetime, c.IntermediateLifetime)
	}
	return c, nil
}

// Root is the mesh's root CA.
type Root struct {
	Cert    *x509.Certificate
	CertPEM []byte
	// Key is zero for an offline root: intermediates then come back signed
	// through IntermediateRequest/AcceptIntermediate.
	Key PrivateKeyPEM
}

// NewRoot generates a self-signed root CA (CA:true, O=Istio, CN=Root CA).
func NewRoot(cfg Config) (*Root, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	priv, keyPEM, err := generateKey(cfg.KeyAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("root CA: %w", err)
	}
	req := &csr.CertificateRequest{
		CN:    RootCommonName,
		Names: []csr.Name{{O: Organization}},
		CA:    &csr.CAConfig{Expiry: cfg.RootLifetime.String()},
	}
	certPEM, _, err := initca.NewFromSigner(req, priv)
	if err != nil {
		return nil, fmt.Errorf("root CA: sign: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("root CA: %w", err)
	}
	return &Root{Cert: cert, CertPEM: certPEM, Key: keyPEM}, nil
}

// ImportRoot brings the user's own root: the key must match the
// certificate, which must be a CA allowed to sign certificates and valid
// at now. Each failure has its own error (ErrInvalidPEM, ErrNotCA,
// ErrExpired, ErrNotYetValid, ErrKeyUsage, ErrPathLen, ErrKeyMismatch).
func ImportRoot(certPEM, keyPEM []byte, now time.Time) (*Root, error) {
	r, err := ImportRootCert(certPEM, now)
	if err != nil {
		return nil, err
	}
	key := NewPrivateKeyPEM(keyPEM)
	priv, err := key.Signer()
	if err != nil {
		return nil, fmt.Errorf("import root: %w", err)
	}
	if !keyMatches(priv, r.Cert.PublicKey) {
		return nil, fmt.Errorf("import root %q: %w", r.Cert.Subject, ErrKeyMismatch)
	}
	// Re-encode so that stored roots are uniform PKCS#8, without openssl's
	// EC PARAMETERS block or trailing text.
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("import root: encode key: %w", err)
	}
	r.Key = NewPrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return r, nil
}

// ImportRootCert takes an offline root's certificate alone; its key stays
// wherever the user keeps it. The same checks as ImportRoot apply, except
// the key's.
func ImportRootCert(certPEM []byte, now time.Time) (*Root, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("import root: %w", err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("import root: %w: want exactly one certificate, found %d", ErrInvalidPEM, len(certs))
	}
	cert := certs[0]
	if err := checkCA(cert, now); err != nil {
		return nil, fmt.Errorf("import root %q: %w", cert.Subject, err)
	}
	if cert.MaxPathLen == 0 && cert.MaxPathLenZero {
		// pathlen:0 on the root forbids the per-cluster intermediates.
		return nil, fmt.Errorf("import root %q: %w: pathlen:0 forbids intermediate CAs below it", cert.Subject, ErrPathLen)
	}
	return &Root{Cert: cert, CertPEM: encodeCert(cert)}, nil
}

// HasKey reports whether flotilla holds the root key (false: offline root).
func (r *Root) HasKey() bool { return !r.Key.IsZero() }

func (r *Root) signer() (crypto.Signer, error) {
	if !r.HasKey() {
		return nil, ErrNoRootKey
	}
	priv, err := r.Key.Signer()
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	if !keyMatches(priv, r.Cert.PublicKey) {
		return nil, fmt.Errorf("root key: %w", ErrKeyMismatch)
	}
	return priv, nil
}

// checkCA holds the checks shared by every certificate that must act as a
// CA at time now.
func checkCA(cert *x509.Certificate, now time.Time) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return ErrNotCA
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%w: not after %s", ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%w: not before %s", ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	// An absent keyUsage extension places no restriction (RFC 5280 4.2.1.3).
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return ErrKeyUsage
	}
	return nil
}

// parseCerts decodes every CERTIFICATE block; anything else in the input,
// or no certificate at all, is ErrInvalidPEM.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	return decodePEM(data, "CERTIFICATE", "certificate", x509.ParseCertificate)
}

// decodePEM parses every PEM block of data, each of type blockType, with
// parse; another type of block, or none at all, is ErrInvalidPEM. what
// names a block in errors.
func decodePEM[T any](data []byte, blockType, what string, parse func([]byte) (T, error)) ([]T, error) {
	var out []T
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != blockType {
			return nil, fmt.Errorf("%w: unexpected PEM block %q where %ss were expected", ErrInvalidPEM, b.Type, what)
		}
		v, err := parse(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidPEM, what, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no PEM %s found", ErrInvalidPEM, what)
	}
	return out, nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
