package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"strings"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/helpers"
)

// KeyAlgorithm is the key type of a CA, as written in the mesh spec.
type KeyAlgorithm string

const (
	// RSA4096 is the default, as in Istio's own certificate tooling.
	RSA4096 KeyAlgorithm = "RSA-4096"
	// RSA2048 trades strength for faster key generation.
	RSA2048 KeyAlgorithm = "RSA-2048"
	// ECDSAP256 is an ECDSA key on the NIST P-256 curve.
	ECDSAP256 KeyAlgorithm = "ECDSA-P256"
)

// KeyAlgorithms lists the supported algorithms, default first.
var KeyAlgorithms = []KeyAlgorithm{RSA4096, RSA2048, ECDSAP256}

// ParseKeyAlgorithm parses a spec value; "" is the default, RSA-4096.
// Case is ignored so that "rsa-4096" from a hand-written spec is accepted.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	if s == "" {
		return RSA4096, nil
	}
	for _, a := range KeyAlgorithms {
		if strings.EqualFold(s, string(a)) {
			return a, nil
		}
	}
	return "", fmt.Errorf("%w %q (supported: RSA-4096, RSA-2048, ECDSA-P256)", ErrUnknownKeyAlgorithm, s)
}

// keyRequest is the cfssl key request for a.
func (a KeyAlgorithm) keyRequest() (*csr.KeyRequest, error) {
	switch a {
	case RSA4096, "":
		return &csr.KeyRequest{A: "rsa", S: 4096}, nil
	case RSA2048:
		return &csr.KeyRequest{A: "rsa", S: 2048}, nil
	case ECDSAP256:
		return &csr.KeyRequest{A: "ecdsa", S: 256}, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownKeyAlgorithm, string(a))
}

// generateKey creates a new private key of algorithm a.
func generateKey(a KeyAlgorithm) (crypto.Signer, PrivateKeyPEM, error) {
	kr, err := a.keyRequest()
	if err != nil {
		return nil, PrivateKeyPEM{}, err
	}
	k, err := kr.Generate()
	if err != nil {
		return nil, PrivateKeyPEM{}, fmt.Errorf("generate %s key: %w", a, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, PrivateKeyPEM{}, fmt.Errorf("generate %s key: %T is not a signer", a, k)
	}
	// PKCS#8, as `openssl genrsa` (OpenSSL 3) writes it; istiod reads PKCS#1, PKCS#8 and SEC 1.
	der, err := x509.MarshalPKCS8PrivateKey(s)
	if err != nil {
		return nil, PrivateKeyPEM{}, fmt.Errorf("encode %s key: %w", a, err)
	}
	return s, NewPrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

// algorithmOf names the algorithm of a public key, for display and for
// issuing rotated intermediates with the same algorithm.
func algorithmOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(k.Curve.Params().Name, "-", "")
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

const redacted = "[REDACTED]"

// PrivateKeyPEM holds PEM-encoded private-key material. Every way of
// printing or serialising it (fmt verbs, slog, JSON, text) yields
// "[REDACTED]", so a key cannot reach a log line, an error or `-o json`
// by accident; the bytes come out only through Reveal.
//
// The bytes sit behind a pointer so that even reflection-based printing of
// a struct holding this value in an unexported field shows an address, not
// the key.
type PrivateKeyPEM struct {
	k *keyBytes
}

type keyBytes struct{ pem []byte }

// NewPrivateKeyPEM wraps PEM key material; it keeps its own copy.
func NewPrivateKeyPEM(b []byte) PrivateKeyPEM {
	if len(b) == 0 {
		return PrivateKeyPEM{}
	}
	return PrivateKeyPEM{k: &keyBytes{pem: bytes.Clone(b)}}
}

// Reveal returns a copy of the PEM bytes. Call it only where the key must
// leave flotilla's memory on purpose: the cacerts Secret, an export, the
// encrypted state.
func (p PrivateKeyPEM) Reveal() []byte {
	if p.k == nil {
		return nil
	}
	return bytes.Clone(p.k.pem)
}

// IsZero reports whether no key is held (an offline root, for example).
func (p PrivateKeyPEM) IsZero() bool { return p.k == nil || len(p.k.pem) == 0 }

// Equal reports whether both hold the same key bytes.
func (p PrivateKeyPEM) Equal(o PrivateKeyPEM) bool { return bytes.Equal(p.Reveal(), o.Reveal()) }

// Signer parses the key.
func (p PrivateKeyPEM) Signer() (crypto.Signer, error) {
	if p.IsZero() {
		return nil, fmt.Errorf("%w: no private key", ErrInvalidPEM)
	}
	s, err := helpers.ParsePrivateKeyPEM(p.k.pem)
	if err != nil {
		// cfssl's error text never contains the key; keep only its kind.
		return nil, fmt.Errorf("%w: private key is not a PEM RSA or ECDSA key", ErrInvalidPEM)
	}
	return s, nil
}

func (p PrivateKeyPEM) String() string   { return redacted }
func (p PrivateKeyPEM) GoString() string { return "pki.PrivateKeyPEM{" + redacted + "}" }

// Format covers every verb, including %x, %q and %+v, which would otherwise
// bypass String.
func (p PrivateKeyPEM) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = f.Write([]byte(p.GoString()))
		return
	}
	_, _ = f.Write([]byte(redacted))
}

func (p PrivateKeyPEM) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (p PrivateKeyPEM) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (p PrivateKeyPEM) LogValue() slog.Value         { return slog.StringValue(redacted) }

// keyMatches reports whether priv is the private half of pub.
func keyMatches(priv crypto.Signer, pub crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := priv.Public().(equaler)
	return ok && e.Equal(pub)
}
