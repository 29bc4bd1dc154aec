package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

// TestCheckCRLs: Envoy's CRL_CHECK_ALL as the emulator plays it.
func TestCheckCRLs(t *testing.T) {
	now := time.Now()
	type ca struct {
		cert *x509.Certificate
		key  *ecdsa.PrivateKey
	}
	issue := func(cn string, parent *ca, isCA bool, serial int64) *ca {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			BasicConstraintsValid: true, IsCA: isCA,
		}
		if isCA {
			tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		}
		signer, signerKey := tmpl, k
		if parent != nil {
			signer, signerKey = parent.cert, parent.key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, k.Public(), signerKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return &ca{c, k}
	}
	crl := func(by *ca, next time.Time, revoked ...*ca) *x509.RevocationList {
		tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now.Add(-time.Minute), NextUpdate: next}
		for _, r := range revoked {
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: r.cert.SerialNumber, RevocationTime: now})
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, by.cert, by.key)
		if err != nil {
			t.Fatal(err)
		}
		l, _ := x509.ParseRevocationList(der)
		return l
	}
	root := issue("Root CA", nil, true, 1)
	east := issue("Intermediate CA east", root, true, 2)
	west := issue("Intermediate CA west", root, true, 3)
	eastLeaf, westLeaf := issue("", east, false, 10), issue("", west, false, 11)
	later := now.Add(time.Hour)
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		crls  []*x509.RevocationList
		want  string // "" accepted
	}{
		{"every CA signed a CRL", []*x509.Certificate{eastLeaf.cert, east.cert, root.cert}, []*x509.RevocationList{crl(root, later), crl(east, later)}, ""},
		{"the leaf's issuer signed none", []*x509.Certificate{westLeaf.cert, west.cert, root.cert}, []*x509.RevocationList{crl(root, later), crl(east, later)}, "unable to get certificate CRL"},
		{"the root signed none", []*x509.Certificate{eastLeaf.cert, east.cert, root.cert}, []*x509.RevocationList{crl(east, later)}, "unable to get certificate CRL"},
		{"the root revoked the intermediate", []*x509.Certificate{westLeaf.cert, west.cert, root.cert}, []*x509.RevocationList{crl(root, later, west), crl(west, later)}, "certificate revoked"},
		{"another intermediate revoked", []*x509.Certificate{eastLeaf.cert, east.cert, root.cert}, []*x509.RevocationList{crl(root, later, west), crl(east, later)}, ""},
		{"an expired CRL", []*x509.Certificate{eastLeaf.cert, east.cert, root.cert}, []*x509.RevocationList{crl(root, now.Add(-time.Second)), crl(east, later)}, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCRLs(tc.chain, tc.crls, now)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}
