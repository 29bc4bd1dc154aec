package pki

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// Bundle is a mesh's trust bundle: every root its workloads accept. It has
// one root, or two while a root rotation is in progress.
type Bundle struct {
	Roots []*x509.Certificate
}

// NewBundle builds a bundle from parsed roots.
func NewBundle(roots ...*x509.Certificate) *Bundle { return &Bundle{Roots: roots} }

// ParseBundle reads one or more PEM roots; every one must be a CA.
func ParseBundle(pemData []byte) (*Bundle, error) {
	certs, err := parseCerts(pemData)
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	for _, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("trust bundle: %q: %w", c.Subject, ErrNotCA)
		}
	}
	return &Bundle{Roots: certs}, nil
}

// PEM encodes the roots, in order, as root-cert.pem holds them.
func (b *Bundle) PEM() []byte {
	var out []byte
	for _, r := range b.Roots {
		out = append(out, encodeCert(r)...)
	}
	return out
}

// Contains reports whether root is one of the bundle's roots.
func (b *Bundle) Contains(root *x509.Certificate) bool {
	return slices.ContainsFunc(b.Roots, root.Equal)
}

// Fingerprints lists the roots' SHA-256 fingerprints.
func (b *Bundle) Fingerprints() []string {
	var fps []string
	for _, r := range b.Roots {
		fps = append(fps, Fingerprint(r))
	}
	return fps
}

// VerifyChain verifies a PEM chain (leaf first, then intermediates; a root
// at the end is allowed) against the bundle at now. When wantID is not
// empty the leaf must carry exactly that SPIFFE ID as its URI SAN.
func (b *Bundle) VerifyChain(chainPEM []byte, now time.Time, wantID string) (*x509.Certificate, error) {
	chain, err := parseCerts(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("verify chain: %w", err)
	}
	return b.Verify(chain, now, wantID)
}

// Verify is VerifyChain on parsed certificates.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time, wantID string) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("verify chain: %w: empty chain", ErrInvalidPEM)
	}
	leaf := chain[0]
	roots := x509.NewCertPool()
	for _, r := range b.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("verify %q: %w (bundle %v): %v", leaf.Subject, ErrUntrusted, b.Fingerprints(), err)
	}
	if wantID != "" {
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID {
			var got []string
			for _, u := range leaf.URIs {
				got = append(got, u.String())
			}
			return nil, fmt.Errorf("verify chain: %w: leaf has URI SANs %v, want %s", ErrSPIFFEID, got, wantID)
		}
	}
	return leaf, nil
}
