package pki

import (
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCRL(t *testing.T) {
	now := time.Now()
	root, err := NewRoot(Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	east, err := root.IssueIntermediate("east", "istio-system", Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	west, err := root.IssueIntermediate("west", "istio-system", Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	westGone := RevokedCert{Cluster: "west", Serial: west.Cert.SerialNumber, RevokedAt: now}
	rootCRL, err := root.SignCRL([]RevokedCert{westGone}, 7, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	eastCRL, err := east.SignCRL(1, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	westCRL, err := west.SignCRL(1, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	withCRL := func(in *Intermediate, crl ...[]byte) CACerts {
		cc, err := NewCACerts(in, root, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range crl {
			cc.CRL = append(cc.CRL, c...)
		}
		return cc
	}

	t.Run("root CRL is RFC 5280 v2 with number, next-update and the revoked serial", func(t *testing.T) {
		crls, err := ParseCRLs(rootCRL)
		if err != nil || len(crls) != 1 {
			t.Fatalf("parse: %d CRLs, %v", len(crls), err)
		}
		c := crls[0]
		if err := c.CheckSignatureFrom(root.Cert); err != nil {
			t.Errorf("not signed by the root: %v", err)
		}
		if c.Number.Int64() != 7 || !c.NextUpdate.After(now) || c.NextUpdate.Sub(c.ThisUpdate) != time.Hour {
			t.Errorf("number %v, this %v, next %v; want 7 and one hour", c.Number, c.ThisUpdate, c.NextUpdate)
		}
		if !Revokes(c, west.Cert.SerialNumber) || Revokes(c, east.Cert.SerialNumber) {
			t.Errorf("revokes west %v, east %v; want only west", Revokes(c, west.Cert.SerialNumber), Revokes(c, east.Cert.SerialNumber))
		}
	})
	t.Run("cacerts with a CRL from every CA of its chain validates", func(t *testing.T) {
		if err := withCRL(east, rootCRL, eastCRL, westCRL).Validate(now); err != nil {
			t.Error(err)
		}
	})
	t.Run("cacerts lacking its intermediate's CRL is refused as istiod would", func(t *testing.T) {
		err := withCRL(east, rootCRL, westCRL).Validate(now)
		if err == nil || !strings.Contains(err.Error(), "no CRL signed by") {
			t.Errorf("got %v, want the missing CRL named", err)
		}
	})
	t.Run("cacerts of a revoked intermediate is refused", func(t *testing.T) {
		if err := withCRL(west, rootCRL, westCRL).Validate(now); !errors.Is(err, ErrRevoked) {
			t.Errorf("got %v, want ErrRevoked", err)
		}
	})
	t.Run("a CA without cRLSign cannot sign a CRL", func(t *testing.T) {
		old := *east
		c := *east.Cert
		c.KeyUsage &^= 1 << 6 // cRLSign
		old.Cert = &c
		if _, err := old.SignCRL(1, now, time.Hour); !errors.Is(err, ErrNoCRLSign) {
			t.Errorf("got %v, want ErrNoCRLSign", err)
		}
	})
	t.Run("the fifth key round-trips through the Secret data and the export", func(t *testing.T) {
		cc := withCRL(east, rootCRL, eastCRL)
		back, err := ParseCACerts(cc.SecretData())
		if err != nil || !back.Equal(cc) {
			t.Fatalf("round trip: equal %v, %v", back.Equal(cc), err)
		}
		if back.Equal(withCRL(east, rootCRL)) {
			t.Error("Equal ignores ca-crl.pem")
		}
		dir := t.TempDir()
		if err := cc.WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, CRLFile)); err != nil || string(b) != string(cc.CRL) {
			t.Errorf("exported %s: %v", CRLFile, err)
		}
	})
	t.Run("the root keeps cRLSign", func(t *testing.T) {
		if !CanSignCRL(root.Cert) {
			t.Errorf("root keyUsage %b lacks cRLSign", root.Cert.KeyUsage)
		}
	})
}

func TestEvenHex(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{1, "01"}, {255, "FF"}, {256, "0100"}, {0xABCDE, "0ABCDE"}} {
		if got := EvenHex(big.NewInt(tc.n)); got != tc.want {
			t.Errorf("EvenHex(%d) = %s, want %s", tc.n, got, tc.want)
		}
	}
}
