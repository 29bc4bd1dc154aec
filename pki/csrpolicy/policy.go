// Package csrpolicy is certificate-request policy as a chain of small
// validators, in the way smallstep's sign options are: each Validator is
// one rule over a parsed PKCS#10 request, a Chain runs them in order and
// stops at the first refusal. The hub issuer (intermediates) and the
// csr-agent (workload certificates) build their chains from these rules.
//
// SANs are read from the request's raw subjectAltName extension, not from
// the fields Go's parser fills: otherName, directoryName, registeredID and
// x400Address never surface there, and a rule that looks only at DNSNames
// and URIs would let them through.
package csrpolicy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrRefused is matched by every refusal of a Chain.
var ErrRefused = errors.New("certificate request refused by policy")

// Refusal is one validator's reason for refusing a request.
type Refusal struct {
	// Rule names the validator.
	Rule   string
	Reason string
}

func (r *Refusal) Error() string        { return r.Rule + ": " + r.Reason }
func (r *Refusal) Is(target error) bool { return target == ErrRefused }

// Validator is one rule over a request.
type Validator interface {
	Name() string
	Valid(*x509.CertificateRequest) error
}

// Chain runs validators in order.
type Chain []Validator

// Valid returns the first refusal as a *Refusal, or nil.
func (c Chain) Valid(csr *x509.CertificateRequest) error {
	for _, v := range c {
		if err := v.Valid(csr); err != nil {
			return &Refusal{Rule: v.Name(), Reason: err.Error()}
		}
	}
	return nil
}

// Signature checks the request's self-signature: the requester holds the key.
type Signature struct{}

func (Signature) Name() string { return "signature" }
func (Signature) Valid(csr *x509.CertificateRequest) error {
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("bad self-signature: %v", err)
	}
	return nil
}

// Key accepts RSA keys of at least MinRSABits and ECDSA keys on the listed
// curves, nothing else (no Ed25519: Istio's proxies cannot use it).
type Key struct {
	MinRSABits int
	Curves     []elliptic.Curve
}

// DefaultKey: RSA >= 2048, P-256 or P-384.
var DefaultKey = Key{MinRSABits: 2048, Curves: []elliptic.Curve{elliptic.P256(), elliptic.P384()}}

func (Key) Name() string { return "key" }
func (k Key) Valid(csr *x509.CertificateRequest) error {
	switch pub := csr.PublicKey.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < k.MinRSABits {
			return fmt.Errorf("RSA key of %d bits, want at least %d", n, k.MinRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		if slices.Contains(k.Curves, pub.Curve) {
			return nil
		}
		var names []string
		for _, c := range k.Curves {
			names = append(names, c.Params().Name)
		}
		return fmt.Errorf("ECDSA curve %s, want one of %s", pub.Curve.Params().Name, strings.Join(names, ", "))
	default:
		return fmt.Errorf("%T key, want RSA or ECDSA", csr.PublicKey)
	}
}

// GeneralName is one decoded entry of a subjectAltName.
type GeneralName struct {
	// Tag is the GeneralName choice: 0 otherName, 1 rfc822Name, 2 dNSName,
	// 3 x400Address, 4 directoryName, 5 ediPartyName, 6 URI, 7 iPAddress,
	// 8 registeredID.
	Tag   int
	Value []byte
}

// Name tags of GeneralName.
const (
	TagDNS = 2
	TagURI = 6
)

var tagNames = map[int]string{0: "otherName", 1: "email", 2: "DNS", 3: "x400Address", 4: "directoryName", 5: "ediPartyName", 6: "URI", 7: "IP", 8: "registeredID"}

func (g GeneralName) String() string {
	n, ok := tagNames[g.Tag]
	if !ok {
		n = fmt.Sprintf("[%d]", g.Tag)
	}
	if g.Tag == TagDNS || g.Tag == TagURI || g.Tag == 1 {
		return n + ":" + string(g.Value)
	}
	return n
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// SANs decodes every GeneralName of the request's subjectAltName
// extension(s), whatever their type. A request with two SAN extensions
// yields both: a rule sees everything a signer could copy.
func SANs(csr *x509.CertificateRequest) ([]GeneralName, error) {
	var out []GeneralName
	for _, e := range csr.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(e.Value, &seq)
		if err != nil || len(rest) > 0 || seq.Tag != asn1.TagSequence || !seq.IsCompound {
			return nil, errors.New("malformed subjectAltName")
		}
		for in := seq.Bytes; len(in) > 0; {
			var v asn1.RawValue
			if in, err = asn1.Unmarshal(in, &v); err != nil {
				return nil, errors.New("malformed subjectAltName entry")
			}
			if v.Class != asn1.ClassContextSpecific {
				return nil, errors.New("subjectAltName entry is not a GeneralName")
			}
			out = append(out, GeneralName{Tag: v.Tag, Value: v.Bytes})
		}
	}
	return out, nil
}

// ExactSANs accepts a request whose SANs are exactly Want, in any order,
// and nothing else of any type.
type ExactSANs struct {
	Want []GeneralName
}

func (ExactSANs) Name() string { return "subjectAltName" }
func (s ExactSANs) Valid(csr *x509.CertificateRequest) error {
	got, err := SANs(csr)
	if err != nil {
		return err
	}
	var names []string
	for _, g := range got {
		names = append(names, g.String())
	}
	var want []string
	for _, g := range s.Want {
		want = append(want, g.String())
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) || len(got) != len(s.Want) {
		return fmt.Errorf("SANs %v, want exactly %v", names, want)
	}
	return nil
}

// DNS and URI build the GeneralNames of ExactSANs.
func DNS(name string) GeneralName { return GeneralName{Tag: TagDNS, Value: []byte(name)} }
func URI(uri string) GeneralName  { return GeneralName{Tag: TagURI, Value: []byte(uri)} }

// Subject accepts a subject made of exactly the given attributes, each at
// most once: nothing more, nothing less. The zero Subject accepts only an
// empty subject (istio-agent sends none).
type Subject struct {
	Organization, CommonName, Locality string
}

var (
	oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidL  = asn1.ObjectIdentifier{2, 5, 4, 7}
	oidO  = asn1.ObjectIdentifier{2, 5, 4, 10}
)

func (Subject) Name() string { return "subject" }
func (s Subject) Valid(csr *x509.CertificateRequest) error {
	want := map[string]string{}
	for oid, v := range map[string]string{oidO.String(): s.Organization, oidCN.String(): s.CommonName, oidL.String(): s.Locality} {
		if v != "" {
			want[oid] = v
		}
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(csr.RawSubject, &rdns); err != nil || len(rest) > 0 {
		return errors.New("malformed subject")
	}
	seen := map[string]bool{}
	for _, rdn := range rdns {
		for _, atv := range rdn {
			oid := atv.Type.String()
			v, _ := atv.Value.(string)
			if w, ok := want[oid]; !ok || seen[oid] || v != w {
				return fmt.Errorf("subject %q, want %s", csr.Subject.String(), s.describe())
			}
			seen[oid] = true
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("subject %q, want %s", csr.Subject.String(), s.describe())
	}
	return nil
}

func (s Subject) describe() string {
	var parts []string
	if s.CommonName != "" {
		parts = append(parts, "CN="+s.CommonName)
	}
	if s.Locality != "" {
		parts = append(parts, "L="+s.Locality)
	}
	if s.Organization != "" {
		parts = append(parts, "O="+s.Organization)
	}
	if len(parts) == 0 {
		return "an empty subject"
	}
	return strings.Join(parts, ",")
}

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// BasicConstraints accepts a request whose basicConstraints extension, if
// any, asks for CA exactly when CA is set. An absent extension is neither:
// the signer's profile decides.
type BasicConstraints struct {
	CA bool
}

func (BasicConstraints) Name() string { return "basicConstraints" }
func (b BasicConstraints) Valid(csr *x509.CertificateRequest) error {
	for _, e := range csr.Extensions {
		if !e.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		if rest, err := asn1.Unmarshal(e.Value, &bc); err != nil || len(rest) > 0 {
			return errors.New("malformed basicConstraints")
		}
		if bc.IsCA != b.CA {
			if bc.IsCA {
				return errors.New("asks for a CA certificate")
			}
			return errors.New("asks for CA:false, want a CA")
		}
	}
	return nil
}

// IstioAgentSubject accepts what istio-agent puts in a workload CSR's
// subject (security/pkg/pki/util GenCSRTemplate): one organization
// attribute whose value is empty, or nothing at all. Workload identity is
// the SPIFFE URI; any other attribute is something a signer might copy.
type IstioAgentSubject struct{}

func (IstioAgentSubject) Name() string { return "subject" }
func (IstioAgentSubject) Valid(csr *x509.CertificateRequest) error {
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(csr.RawSubject, &rdns); err != nil || len(rest) > 0 {
		return errors.New("malformed subject")
	}
	n := 0
	for _, rdn := range rdns {
		for _, atv := range rdn {
			n++
			if v, _ := atv.Value.(string); !atv.Type.Equal(oidO) || v != "" || n > 1 {
				return fmt.Errorf("subject %q, want none beyond istio-agent's empty O", csr.Subject.String())
			}
		}
	}
	return nil
}
