package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"testing"
	"time"
)

// fuzzCA is a small CA for the fuzz targets: a root, one intermediate, its
// cacerts and a pending CSR, made once per target (ECDSA keeps it quick).
type fuzzCA struct {
	root *Root
	in   *Intermediate
	cc   CACerts
	req  *IntermediateRequest
}

func newFuzzCA(f *testing.F) fuzzCA {
	f.Helper()
	root, err := NewRoot(Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		f.Fatal(err)
	}
	in, err := root.IssueIntermediate("east", "istio-system", Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		f.Fatal(err)
	}
	cc, err := NewCACerts(in, root, nil)
	if err != nil {
		f.Fatal(err)
	}
	req, err := NewIntermediateRequest("west", "istio-system", ECDSAP256)
	if err != nil {
		f.Fatal(err)
	}
	return fuzzCA{root: root, in: in, cc: cc, req: req}
}

func workloadCSR(f *testing.F, uris ...string) []byte {
	f.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "w"}, DNSNames: []string{"x.example"}}
	for _, u := range uris {
		p, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		f.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// FuzzParseBundle: a bundle is accepted only if every block is a CA
// certificate, and what it encodes parses back to the same roots.
func FuzzParseBundle(f *testing.F) {
	ca := newFuzzCA(f)
	f.Add(ca.root.CertPEM)
	f.Add(append(bytes.Clone(ca.root.CertPEM), ca.root.CertPEM...))
	f.Add(ca.in.CertPEM)
	f.Add(ca.cc.CertChain)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("not pem"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			return
		}
		if len(b.Roots) == 0 {
			t.Fatal("accepted a bundle without roots")
		}
		for _, r := range b.Roots {
			if !r.IsCA || !r.BasicConstraintsValid {
				t.Fatalf("accepted a non-CA %q", r.Subject)
			}
		}
		again, err := ParseBundle(b.PEM())
		if err != nil || len(again.Roots) != len(b.Roots) {
			t.Fatalf("re-encoded bundle does not parse back: %v", err)
		}
	})
}

// FuzzImportRoot: an imported root is a CA whose key, when given, matches.
func FuzzImportRoot(f *testing.F) {
	ca := newFuzzCA(f)
	f.Add(ca.root.CertPEM, ca.root.Key.Reveal())
	f.Add(ca.root.CertPEM, []byte{})
	f.Add(ca.in.CertPEM, ca.in.Key.Reveal())
	f.Add(ca.root.CertPEM, ca.in.Key.Reveal())
	f.Add([]byte("garbage"), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		var r *Root
		var err error
		if len(keyPEM) == 0 {
			r, err = ImportRootCert(certPEM, now)
		} else {
			r, err = ImportRoot(certPEM, keyPEM, now)
		}
		if err != nil {
			if len(keyPEM) >= 32 && bytes.Contains([]byte(err.Error()), keyPEM) {
				t.Fatal("the error carries the key it was given")
			}
			return
		}
		if !r.Cert.IsCA {
			t.Fatalf("imported a non-CA root %q", r.Cert.Subject)
		}
		if len(keyPEM) > 0 {
			s, err := r.signer()
			if err != nil || !keyMatches(s, r.Cert.PublicKey) {
				t.Fatalf("imported a root whose key does not match: %v", err)
			}
		}
	})
}

// FuzzCSR runs arbitrary certificate requests through both signers that take
// them: the root signing an offline intermediate's CSR, and the workload
// issuer. Whatever the CSR says, the intermediate comes out CA:true pathlen:0
// with istiod's SAN, and a workload leaf carries only the SPIFFE ID it was
// authorised for and no CA bit.
func FuzzCSR(f *testing.F) {
	ca := newFuzzCA(f)
	iss, err := NewIssuer(ca.cc, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	id := SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	f.Add(ca.req.CSRPEM)
	f.Add(workloadCSR(f, id.String()))
	f.Add(workloadCSR(f, "spiffe://cluster.local/ns/kube-system/sa/admin"))
	f.Add(workloadCSR(f, id.String(), "spiffe://evil/ns/a/sa/b"))
	f.Add(workloadCSR(f))
	f.Add([]byte("-----BEGIN NEW CERTIFICATE REQUEST-----\nMAA=\n-----END NEW CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, csrPEM []byte) {
		if certPEM, err := ca.root.SignIntermediateCSR(csrPEM, "istio-system", time.Hour); err == nil {
			c, err := parseCert(certPEM)
			if err != nil {
				t.Fatalf("signed intermediate does not parse: %v", err)
			}
			if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
				t.Fatalf("intermediate from a CSR: IsCA=%v pathlen=%d zero=%v", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
			}
			if c.NotAfter.After(ca.root.Cert.NotAfter) {
				t.Fatal("intermediate outlives its root")
			}
		}
		w, err := iss.SignWorkload(WorkloadRequest{ID: id, CSR: csrPEM}, time.Now())
		if err != nil {
			return
		}
		if w.Cert.IsCA || len(w.Cert.URIs) != 1 || w.Cert.URIs[0].String() != id.String() ||
			len(w.Cert.DNSNames)+len(w.Cert.IPAddresses)+len(w.Cert.EmailAddresses) > 0 {
			t.Fatalf("workload leaf: CA=%v URIs=%v DNS=%v", w.Cert.IsCA, w.Cert.URIs, w.Cert.DNSNames)
		}
	})
}

// FuzzAcceptIntermediate: what comes back from an offline root is taken
// only when it is for the pending CSR's key, chains to the root and has the
// intermediate profile.
func FuzzAcceptIntermediate(f *testing.F) {
	ca := newFuzzCA(f)
	signed, err := ca.root.SignIntermediateCSR(ca.req.CSRPEM, "istio-system", 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add(append(bytes.Clone(signed), ca.root.CertPEM...))
	f.Add(ca.in.CertPEM)
	f.Add(ca.root.CertPEM)
	f.Add([]byte(""))
	now := time.Now()
	f.Fuzz(func(t *testing.T, signedPEM []byte) {
		in, err := AcceptIntermediate(ca.req, signedPEM, ca.root.CertPEM, now)
		if err != nil {
			return
		}
		if err := CheckIntermediate(in.Cert, "west", "istio-system"); err != nil {
			t.Fatalf("accepted an intermediate without its profile: %v", err)
		}
		if _, err := in.Cert.Verify(x509.VerifyOptions{Roots: rootPool(ca.root.Cert), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("accepted an intermediate that does not chain: %v", err)
		}
	})
}

func rootPool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
