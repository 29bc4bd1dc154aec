package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// CRLFile is the optional fifth key of cacerts: istiod (1.27 and later,
// PILOT_ENABLE_CA_CRL, on by default) loads ./etc/cacerts/ca-crl.pem,
// refuses the whole plug-in CA unless it holds a CRL signed by every
// certificate of cert-chain.pem, and publishes it in every namespace as
// the ConfigMap istio-ca-crl (key ca-crl.pem), which the sidecar mounts at
// /var/run/secrets/istio/crl and pilot-agent hands Envoy as the root
// validation context's crl.
const CRLFile = "ca-crl.pem"

// CRLConfigMap is the ConfigMap istiod writes the CRL into in every
// namespace (PILOT_CRL_CONFIGMAP), under the key CRLFile.
const CRLConfigMap = "istio-ca-crl"

// DefaultCRLLifetime is the next-update of the CRLs the hub signs; the
// reconcile loop signs anew once less than half of it is left. Envoy
// refuses every peer whose chain has an expired CRL, so it is days, not
// hours: the hub may be down for a while.
const DefaultCRLLifetime = 7 * 24 * time.Hour

// ErrRevoked is matched by a chain one of whose certificates a CRL lists.
var ErrRevoked = errors.New("certificate is revoked")

// ErrNoCRLSign: the CA's keyUsage does not allow it to sign CRLs.
var ErrNoCRLSign = errors.New("CA keyUsage lacks cRLSign")

// RevokedCert is one certificate the root revoked: a cluster's intermediate.
type RevokedCert struct {
	Cluster   string    `json:"cluster"`
	Serial    *big.Int  `json:"serial"`
	RevokedAt time.Time `json:"revokedAt"`
	// Subject and NotAfter describe the revoked certificate (for an
	// offline signer's openssl database).
	Subject  string    `json:"subject,omitempty"`
	NotAfter time.Time `json:"notAfter,omitzero"`
	// IssuerKeyID is the revoked certificate's authority key identifier:
	// which root it chains to.
	IssuerKeyID []byte `json:"issuerKeyId,omitempty"`
}

// SerialHex is the serial as `ca show` prints serials.
func (r RevokedCert) SerialHex() string { return colonHex(r.Serial.Bytes()) }

// OpenSSLIndex is the revoked list as an `openssl ca` database (index.txt),
// for signing the root's CRL where an offline root key is kept:
// `openssl ca -gencrl` lists every R line.
func OpenSSLIndex(revoked []RevokedCert) []byte {
	var b bytes.Buffer
	asn1Time := func(t time.Time) string { return t.UTC().Format("060102150405Z") }
	for _, r := range revoked {
		notAfter := r.NotAfter
		if notAfter.IsZero() {
			notAfter = r.RevokedAt.Add(DefaultIntermediateLifetime)
		}
		subject := r.Subject
		if subject == "" {
			subject = "/O=" + Organization + "/CN=" + IntermediateCommonName + "/L=" + r.Cluster
		}
		fmt.Fprintf(&b, "R\t%s\t%s\t%s\tunknown\t%s\n", asn1Time(notAfter), asn1Time(r.RevokedAt), EvenHex(r.Serial), subject)
	}
	return b.Bytes()
}

// EvenHex is n in upper-case hex with an even number of digits, as
// openssl's index.txt and crlnumber files want it.
func EvenHex(n *big.Int) string {
	h := fmt.Sprintf("%X", n)
	if len(h)%2 == 1 {
		h = "0" + h
	}
	return h
}

// SignCRL signs, with the root, an RFC 5280 CRL (v2, with CRL number and
// authority key identifier) that lists revoked and is valid from now to
// now+life.
func (r *Root) SignCRL(revoked []RevokedCert, number int64, now time.Time, life time.Duration) ([]byte, error) {
	priv, err := r.signer()
	if err != nil {
		return nil, fmt.Errorf("root CRL: %w", err)
	}
	return signCRL(r.Cert, priv, revoked, number, now, life)
}

// SignCRL signs the intermediate's own CRL: it revokes nothing, but Envoy
// (and istiod, for its own chain) need one from every CA of a chain once a
// CRL is configured at all.
func (in *Intermediate) SignCRL(number int64, now time.Time, life time.Duration) ([]byte, error) {
	priv, err := in.signer()
	if err != nil {
		return nil, err
	}
	crl, err := signCRL(in.Cert, priv, nil, number, now, life)
	if err != nil {
		return nil, fmt.Errorf("%s: intermediate CRL: %w", in.Cluster, err)
	}
	return crl, nil
}

// CanSignCRL reports whether cert's keyUsage allows CRL signing.
func CanSignCRL(cert *x509.Certificate) bool {
	return cert.KeyUsage == 0 || cert.KeyUsage&x509.KeyUsageCRLSign != 0
}

func signCRL(issuer *x509.Certificate, priv crypto.Signer, revoked []RevokedCert, number int64, now time.Time, life time.Duration) ([]byte, error) {
	if !CanSignCRL(issuer) {
		return nil, ErrNoCRLSign
	}
	if life <= 0 {
		life = DefaultCRLLifetime
	}
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: now.UTC().Truncate(time.Second),
		NextUpdate: now.Add(life).UTC().Truncate(time.Second),
	}
	for _, rc := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: rc.Serial, RevocationTime: rc.RevokedAt.UTC().Truncate(time.Second),
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, priv)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// ParseCRLs decodes every X509 CRL block of a ca-crl.pem.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	return decodePEM(data, "X509 CRL", "CRL", x509.ParseRevocationList)
}

// CRLFrom returns the CRL of crls that issuer signed, nil when none.
func CRLFrom(crls []*x509.RevocationList, issuer *x509.Certificate) *x509.RevocationList {
	for _, c := range crls {
		if bytes.Equal(c.RawIssuer, issuer.RawSubject) && c.CheckSignatureFrom(issuer) == nil {
			return c
		}
	}
	return nil
}

// CheckChainCRLs is istiod's check of a plug-in CA's ca-crl.pem
// (keycertbundle.Verify): every certificate of cert-chain.pem signed one of
// the CRLs.
func CheckChainCRLs(chain []*x509.Certificate, crls []*x509.RevocationList) error {
	var missing []string
	for _, c := range chain {
		if CRLFrom(crls, c) == nil {
			missing = append(missing, fmt.Sprintf("%q (serial %s)", c.Subject, colonHex(c.SerialNumber.Bytes())))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: no CRL signed by %s (istiod refuses the plug-in CA)", CRLFile, strings.Join(missing, ", "))
	}
	return nil
}

// Revokes reports whether crl lists serial.
func Revokes(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}
