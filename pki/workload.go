package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultWorkloadMaxTTL caps workload certificates as istiod's own CA does
// (MAX_WORKLOAD_CERT_TTL defaults to 90 days; workloads ask for 24h). A
// shorter cap is safer for a signer reachable over the network.
const DefaultWorkloadMaxTTL = 24 * time.Hour

// SPIFFEID is an Istio workload identity,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
type SPIFFEID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

func (id SPIFFEID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URI is the ID as a URI SAN.
func (id SPIFFEID) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Validate checks each part: the trust domain is a lowercase DNS-like name
// (Istio's default is cluster.local), the namespace a DNS-1123 label and
// the service account a DNS-1123 subdomain.
func (id SPIFFEID) Validate() error {
	if id.TrustDomain == "" || strings.ToLower(id.TrustDomain) != id.TrustDomain || len(validation.IsDNS1123Subdomain(id.TrustDomain)) > 0 {
		return fmt.Errorf("%w: trust domain %q", ErrSPIFFEID, id.TrustDomain)
	}
	if len(validation.IsDNS1123Label(id.Namespace)) > 0 {
		return fmt.Errorf("%w: namespace %q", ErrSPIFFEID, id.Namespace)
	}
	if len(validation.IsDNS1123Subdomain(id.ServiceAccount)) > 0 {
		return fmt.Errorf("%w: service account %q", ErrSPIFFEID, id.ServiceAccount)
	}
	return nil
}

// ParseSPIFFEID parses and validates an Istio workload SPIFFE ID.
func ParseSPIFFEID(s string) (SPIFFEID, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "spiffe" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Port() != "" {
		return SPIFFEID{}, fmt.Errorf("%w: %q is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>", ErrSPIFFEID, s)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return SPIFFEID{}, fmt.Errorf("%w: %q is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>", ErrSPIFFEID, s)
	}
	id := SPIFFEID{TrustDomain: u.Host, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return SPIFFEID{}, err
	}
	return id, nil
}

// Issuer signs workload certificates with one cluster's intermediate.
type Issuer struct {
	cert   *x509.Certificate
	key    crypto.Signer
	chain  []*x509.Certificate // intermediate, then root(s) of cert-chain.pem
	maxTTL time.Duration
}

// NewIssuer prepares cc (validated) for signing; maxTTL <= 0 means
// DefaultWorkloadMaxTTL.
func NewIssuer(cc CACerts, maxTTL time.Duration) (*Issuer, error) {
	if err := cc.Validate(time.Now()); err != nil {
		return nil, fmt.Errorf("workload issuer: %w", err)
	}
	cert, err := parseCert(cc.CACert)
	if err != nil {
		return nil, err
	}
	key, err := cc.CAKey.Signer()
	if err != nil {
		return nil, err
	}
	chain, err := parseCerts(cc.CertChain)
	if err != nil {
		return nil, err
	}
	if maxTTL <= 0 {
		maxTTL = DefaultWorkloadMaxTTL
	}
	return &Issuer{cert: cert, key: key, chain: chain, maxTTL: maxTTL}, nil
}

// WorkloadRequest asks for a workload certificate for ID. Exactly one of
// CSR (PEM PKCS#10) and PublicKey is set.
type WorkloadRequest struct {
	ID        SPIFFEID
	CSR       []byte
	PublicKey crypto.PublicKey
	// TTL requested; capped at the issuer's max TTL and the intermediate's
	// own expiry. Zero means the max.
	TTL time.Duration
}

// WorkloadCert is a signed workload certificate and the chain to present.
type WorkloadCert struct {
	Cert    *x509.Certificate
	CertPEM []byte
	// Chain is PEM per certificate: leaf, intermediate, root — the order
	// of IstioCertificateResponse.cert_chain.
	Chain [][]byte
}

// ChainPEM concatenates Chain.
func (w *WorkloadCert) ChainPEM() []byte {
	var out []byte
	for _, c := range w.Chain {
		out = append(out, c...)
	}
	return out
}

// SignWorkload issues a leaf for req.ID: URI SAN the SPIFFE ID (and
// nothing else), digitalSignature and keyEncipherment, server and client
// auth, empty subject as istiod issues them. A CSR's own subject and SANs
// are ignored, except that URI SANs it carries must be exactly req.ID:
// the caller authorised that identity, not whatever the CSR claims.
func (is *Issuer) SignWorkload(req WorkloadRequest, now time.Time) (*WorkloadCert, error) {
	if err := req.ID.Validate(); err != nil {
		return nil, err
	}
	pub := req.PublicKey
	switch {
	case len(req.CSR) > 0 && pub != nil:
		return nil, fmt.Errorf("sign workload %s: give a CSR or a public key, not both", req.ID)
	case len(req.CSR) > 0:
		b, _ := pem.Decode(req.CSR)
		if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
			return nil, fmt.Errorf("sign workload %s: %w: no PEM certificate request", req.ID, ErrInvalidPEM)
		}
		csr, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("sign workload %s: %w: %v", req.ID, ErrInvalidPEM, err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, fmt.Errorf("sign workload %s: CSR signature: %w", req.ID, err)
		}
		for _, u := range csr.URIs {
			if u.String() != req.ID.String() {
				return nil, fmt.Errorf("sign workload %s: %w: CSR asks for %s", req.ID, ErrSPIFFEID, u)
			}
		}
		pub = csr.PublicKey
	case pub == nil:
		return nil, fmt.Errorf("sign workload %s: no CSR or public key", req.ID)
	}
	ttl := req.TTL
	if ttl <= 0 || ttl > is.maxTTL {
		ttl = is.maxTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(is.cert.NotAfter) {
		notAfter = is.cert.NotAfter
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("sign workload %s: serial: %w", req.ID, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// Backdated a minute for clock skew between signer and peers.
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.ID.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.cert, pub, is.key)
	if err != nil {
		return nil, fmt.Errorf("sign workload %s: %w", req.ID, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign workload %s: %w", req.ID, err)
	}
	w := &WorkloadCert{Cert: cert, CertPEM: encodeCert(cert), Chain: [][]byte{encodeCert(cert)}}
	for _, c := range is.chain {
		w.Chain = append(w.Chain, encodeCert(c))
	}
	return w, nil
}
