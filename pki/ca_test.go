package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

// mesh is a root and the cacerts of two clusters, as a two-cluster mesh has.
type mesh struct {
	root       *Root
	east, west *Intermediate
	eastCC     CACerts
	westCC     CACerts
}

func newMesh(t testing.TB, alg KeyAlgorithm) *mesh {
	t.Helper()
	cfg := Config{KeyAlgorithm: alg}
	root, err := NewRoot(cfg)
	if err != nil {
		t.Fatalf("NewRoot(%s): %v", alg, err)
	}
	m := &mesh{root: root}
	for _, p := range []struct {
		name string
		in   **Intermediate
		cc   *CACerts
	}{{"east", &m.east, &m.eastCC}, {"west", &m.west, &m.westCC}} {
		in, err := root.IssueIntermediate(p.name, "istio-system", cfg)
		if err != nil {
			t.Fatalf("IssueIntermediate(%s, %s): %v", p.name, alg, err)
		}
		cc, err := NewCACerts(in, root, nil)
		if err != nil {
			t.Fatalf("NewCACerts(%s): %v", p.name, err)
		}
		*p.in, *p.cc = in, cc
	}
	return m
}

func rawExt(t *testing.T, c *x509.Certificate, oid asn1.ObjectIdentifier) (pkix.Extension, bool) {
	t.Helper()
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e, true
		}
	}
	return pkix.Extension{}, false
}

func skiOf(t *testing.T, c *x509.Certificate) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(c.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Alg pkix.AlgorithmIdentifier
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(info.Key.Bytes)
	return sum[:]
}

func checkKeyAlgorithm(t *testing.T, c *x509.Certificate, alg KeyAlgorithm) {
	t.Helper()
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if want := map[KeyAlgorithm]int{RSA4096: 4096, RSA2048: 2048}[alg]; k.N.BitLen() != want {
			t.Errorf("RSA key of %d bits, want %s", k.N.BitLen(), alg)
		}
	case *ecdsa.PublicKey:
		if alg != ECDSAP256 || k.Curve != elliptic.P256() {
			t.Errorf("ECDSA %s key, want %s", k.Curve.Params().Name, alg)
		}
	default:
		t.Errorf("key %T, want %s", k, alg)
	}
}

var (
	oidSKI = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAKI = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidEKU = asn1.ObjectIdentifier{2, 5, 29, 37}
)

// TestProfiles asserts, extension by extension and on the raw DER, the root
// and intermediate profiles of the brief for every key algorithm.
func TestProfiles(t *testing.T) {
	for _, alg := range KeyAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			m := newMesh(t, alg)
			root := m.root.Cert

			t.Run("root", func(t *testing.T) {
				if got := root.Subject; !slices.Equal(got.Organization, []string{"Istio"}) || got.CommonName != "Root CA" {
					t.Errorf("subject %q, want O=Istio, CN=Root CA", got)
				}
				if !bytes.Equal(root.RawIssuer, root.RawSubject) || root.CheckSignatureFrom(root) != nil {
					t.Errorf("root is not self-signed")
				}
				bc, ok := rawExt(t, root, oidBasicConstraints)
				if !ok || !bc.Critical || !root.IsCA {
					t.Errorf("basicConstraints present=%v critical=%v CA=%v, want critical CA:true", ok, bc.Critical, root.IsCA)
				}
				if root.MaxPathLen == 0 && root.MaxPathLenZero {
					t.Errorf("root has pathlen:0, which forbids intermediates")
				}
				ku, ok := rawExt(t, root, oidKeyUsage)
				if !ok || !ku.Critical || root.KeyUsage&x509.KeyUsageCertSign == 0 {
					t.Errorf("keyUsage present=%v critical=%v usage=%b, want critical with keyCertSign", ok, ku.Critical, root.KeyUsage)
				}
				if !bytes.Equal(root.SubjectKeyId, skiOf(t, root)) {
					t.Errorf("subjectKeyIdentifier %x, want SHA-1 of the key %x", root.SubjectKeyId, skiOf(t, root))
				}
				if life := root.NotAfter.Sub(root.NotBefore); life < DefaultRootLifetime || life > DefaultRootLifetime+time.Hour {
					t.Errorf("root lifetime %s, want 10 years", life)
				}
				checkKeyAlgorithm(t, root, alg)
			})

			for _, in := range []*Intermediate{m.east, m.west} {
				t.Run("intermediate/"+in.Cluster, func(t *testing.T) {
					c := in.Cert
					// Subject O=Istio, CN=Intermediate CA, L=<cluster>, nothing else.
					var rdn pkix.RDNSequence
					if _, err := asn1.Unmarshal(c.RawSubject, &rdn); err != nil {
						t.Fatal(err)
					}
					if got := c.Subject; !slices.Equal(got.Organization, []string{"Istio"}) || got.CommonName != "Intermediate CA" ||
						!slices.Equal(got.Locality, []string{in.Cluster}) || len(rdn) != 3 {
						t.Errorf("subject %q (%d RDNs), want exactly O=Istio, CN=Intermediate CA, L=%s", got, len(rdn), in.Cluster)
					}
					if !bytes.Equal(c.RawIssuer, root.RawSubject) {
						t.Errorf("issuer %q, want the root %q", c.Issuer, root.Subject)
					}

					// basicConstraints: critical, CA:true, pathlen:0 explicitly encoded.
					bc, ok := rawExt(t, c, oidBasicConstraints)
					var bcv struct {
						IsCA    bool `asn1:"optional"`
						PathLen int  `asn1:"optional,default:-1"`
					}
					if _, err := asn1.Unmarshal(bc.Value, &bcv); err != nil {
						t.Fatalf("basicConstraints: %v", err)
					}
					if !ok || !bc.Critical || !bcv.IsCA || bcv.PathLen != 0 {
						t.Errorf("basicConstraints present=%v critical=%v CA=%v pathlen=%d, want critical CA:true pathlen:0", ok, bc.Critical, bcv.IsCA, bcv.PathLen)
					}

					// keyUsage: critical, exactly the four usages and cRLSign.
					ku, ok := rawExt(t, c, oidKeyUsage)
					if !ok || !ku.Critical || c.KeyUsage != IntermediateKeyUsage {
						t.Errorf("keyUsage present=%v critical=%v usage=%09b, want critical %09b (digitalSignature, nonRepudiation, keyEncipherment, keyCertSign, cRLSign)",
							ok, ku.Critical, c.KeyUsage, IntermediateKeyUsage)
					}

					// SKI: the key's SHA-1, non-critical; AKI: the root's SKI.
					ski, ok := rawExt(t, c, oidSKI)
					if !ok || ski.Critical || !bytes.Equal(c.SubjectKeyId, skiOf(t, c)) {
						t.Errorf("subjectKeyIdentifier present=%v critical=%v value=%x, want non-critical SHA-1 of the key", ok, ski.Critical, c.SubjectKeyId)
					}
					aki, ok := rawExt(t, c, oidAKI)
					if !ok || aki.Critical || !bytes.Equal(c.AuthorityKeyId, root.SubjectKeyId) {
						t.Errorf("authorityKeyIdentifier present=%v critical=%v value=%x, want the root's SKI %x", ok, aki.Critical, c.AuthorityKeyId, root.SubjectKeyId)
					}

					// SAN: non-critical, exactly DNS istiod.istio-system.svc.
					san, ok := rawExt(t, c, oidSubjectAltName)
					if !ok || san.Critical || !slices.Equal(c.DNSNames, []string{"istiod.istio-system.svc"}) ||
						len(c.URIs)+len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
						t.Errorf("subjectAltName present=%v critical=%v DNS=%v URIs=%v IPs=%v, want DNS:istiod.istio-system.svc only",
							ok, san.Critical, c.DNSNames, c.URIs, c.IPAddresses)
					}

					// Nothing else: no extendedKeyUsage, no surprise extensions.
					if _, ok := rawExt(t, c, oidEKU); ok {
						t.Errorf("unexpected extendedKeyUsage %v", c.ExtKeyUsage)
					}
					want := []string{"2.5.29.14", "2.5.29.15", "2.5.29.17", "2.5.29.19", "2.5.29.35"}
					var got []string
					for _, e := range c.Extensions {
						got = append(got, e.Id.String())
					}
					slices.Sort(got)
					if !slices.Equal(got, want) {
						t.Errorf("extensions %v, want %v", got, want)
					}

					if life := c.NotAfter.Sub(c.NotBefore); life < DefaultIntermediateLifetime || life > DefaultIntermediateLifetime+time.Hour {
						t.Errorf("intermediate lifetime %s, want 2 years", life)
					}
					if c.NotAfter.After(root.NotAfter) {
						t.Errorf("intermediate outlives the root")
					}
					checkKeyAlgorithm(t, c, alg)
					if err := CheckIntermediate(c, in.Cluster, "istio-system"); err != nil {
						t.Errorf("CheckIntermediate: %v", err)
					}
				})
			}

			t.Run("cacerts", func(t *testing.T) {
				cc := m.eastCC
				if err := cc.Validate(time.Now()); err != nil {
					t.Fatalf("Validate: %v", err)
				}
				// cert-chain.pem is the intermediate followed by the root ...
				chain, err := parseCerts(cc.CertChain)
				if err != nil || len(chain) != 2 || !chain[0].Equal(m.east.Cert) || !chain[1].Equal(root) {
					t.Fatalf("cert-chain.pem: %d certs, err %v; want intermediate then root", len(chain), err)
				}
				if !bytes.Equal(cc.CACert, m.east.CertPEM) || !bytes.Equal(cc.RootCert, m.root.CertPEM) || !cc.CAKey.Equal(m.east.Key) {
					t.Errorf("ca-cert.pem, root-cert.pem or ca-key.pem is not the intermediate, root and key")
				}
				// ... and verifies to root-cert.pem, as istiod checks at start.
				trust, err := ParseBundle(cc.RootCert)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := trust.VerifyChain(cc.CertChain, time.Now(), ""); err != nil {
					t.Errorf("cert-chain.pem does not verify to root-cert.pem: %v", err)
				}
				if bytes.Equal(m.eastCC.CACert, m.westCC.CACert) || !bytes.Equal(m.eastCC.RootCert, m.westCC.RootCert) {
					t.Errorf("east and west must share the root and differ in intermediates")
				}
			})
		})
	}
}

func TestParseKeyAlgorithm(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    KeyAlgorithm
		wantErr bool
	}{
		{"", RSA4096, false},
		{"RSA-4096", RSA4096, false},
		{"RSA-2048", RSA2048, false},
		{"ECDSA-P256", ECDSAP256, false},
		{"ecdsa-p256", ECDSAP256, false},
		{"RSA-1024", "", true},
		{"ECDSA-P384", "", true},
		{"Ed25519", "", true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseKeyAlgorithm(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrUnknownKeyAlgorithm) {
					t.Fatalf("err %v, want ErrUnknownKeyAlgorithm", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := NewRoot(Config{KeyAlgorithm: "DSA-1024"}); !errors.Is(err, ErrUnknownKeyAlgorithm) {
		t.Errorf("NewRoot with an unknown algorithm: %v, want ErrUnknownKeyAlgorithm", err)
	}
}

func TestConfiguredLifetimes(t *testing.T) {
	cfg := Config{KeyAlgorithm: ECDSAP256, RootLifetime: 3 * 24 * time.Hour, IntermediateLifetime: 5 * 24 * time.Hour}
	root, err := NewRoot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if life := root.Cert.NotAfter.Sub(root.Cert.NotBefore); life < cfg.RootLifetime || life > cfg.RootLifetime+time.Hour {
		t.Errorf("root lifetime %s, want %s", life, cfg.RootLifetime)
	}
	in, err := root.IssueIntermediate("east", "istio-system", cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Asked for longer than the root lives: capped at the root's expiry.
	if !in.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("intermediate not after %s, want capped at the root's %s", in.Cert.NotAfter, root.Cert.NotAfter)
	}
}

func TestInvalidNames(t *testing.T) {
	root, err := NewRoot(Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster, ns string
		want        error
	}{
		{"East", "istio-system", ErrInvalidClusterName},
		{"east_1", "istio-system", ErrInvalidClusterName},
		{"-east", "istio-system", ErrInvalidClusterName},
		{"east.example", "istio-system", ErrInvalidClusterName},
		{"", "istio-system", ErrInvalidClusterName},
		{"a234567890123456789012345678901234567890123456789012345678901234", "istio-system", ErrInvalidClusterName},
		{"east", "Istio_System", ErrInvalidNamespace},
	} {
		t.Run(tc.cluster+"/"+tc.ns, func(t *testing.T) {
			if _, err := root.IssueIntermediate(tc.cluster, tc.ns, Config{KeyAlgorithm: ECDSAP256}); !errors.Is(err, tc.want) {
				t.Errorf("IssueIntermediate: %v, want %v", err, tc.want)
			}
			if _, err := NewIntermediateRequest(tc.cluster, tc.ns, ECDSAP256); !errors.Is(err, tc.want) {
				t.Errorf("NewIntermediateRequest: %v, want %v", err, tc.want)
			}
		})
	}
}

// selfSigned makes a certificate outside flotilla's code paths, for the
// bad-root cases.
func selfSigned(t *testing.T, mod func(*x509.Certificate)) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{Organization: []string{"Corp"}, CommonName: "Corp Root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestImportRoot(t *testing.T) {
	goodCert, goodKey := selfSigned(t, nil)
	_, otherKey := selfSigned(t, nil)
	leafCert, leafKey := selfSigned(t, func(c *x509.Certificate) { c.IsCA = false; c.KeyUsage = x509.KeyUsageDigitalSignature })
	expiredCert, expiredKey := selfSigned(t, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	})
	futureCert, futureKey := selfSigned(t, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(24*time.Hour), time.Now().Add(48*time.Hour)
	})
	noSignCert, noSignKey := selfSigned(t, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })
	pathZeroCert, pathZeroKey := selfSigned(t, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })

	for _, tc := range []struct {
		name          string
		cert, key     []byte
		want          error
		wantInMessage string
	}{
		{"garbage cert", []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"), goodKey, ErrInvalidPEM, "invalid PEM"},
		{"not PEM at all", []byte("hello"), goodKey, ErrInvalidPEM, "no PEM certificate"},
		{"key where the cert goes", goodKey, goodKey, ErrInvalidPEM, "unexpected PEM block"},
		{"garbage key", goodCert, []byte("garbage"), ErrInvalidPEM, "private key"},
		{"leaf offered as root", leafCert, leafKey, ErrNotCA, "CA:false"},
		{"expired root", expiredCert, expiredKey, ErrExpired, "expired"},
		{"not yet valid root", futureCert, futureKey, ErrNotYetValid, "not yet valid"},
		{"no keyCertSign", noSignCert, noSignKey, ErrKeyUsage, "certificate signing"},
		{"pathlen 0 root", pathZeroCert, pathZeroKey, ErrPathLen, "pathlen:0"},
		{"mismatched key", goodCert, otherKey, ErrKeyMismatch, "does not match"},
		{"good", goodCert, goodKey, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ImportRoot(tc.cert, tc.key, time.Now())
			if tc.want == nil {
				if err != nil {
					t.Fatalf("ImportRoot: %v", err)
				}
				// An imported root issues intermediates like a generated one.
				in, err := r.IssueIntermediate("east", "istio-system", Config{KeyAlgorithm: ECDSAP256})
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyIntermediate(in.Cert, nil, r.Cert, time.Now()); err != nil {
					t.Errorf("intermediate under the imported root: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			keyLines := strings.Split(string(tc.key), "\n")
			if msg := err.Error(); !strings.Contains(msg, tc.wantInMessage) || (len(keyLines) > 2 && strings.Contains(msg, keyLines[1])) {
				t.Errorf("message %q: want it to say %q and never show key material", msg, tc.wantInMessage)
			}
			// Each bad input fails for its own reason only.
			for _, other := range []error{ErrInvalidPEM, ErrNotCA, ErrExpired, ErrNotYetValid, ErrKeyUsage, ErrPathLen, ErrKeyMismatch} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("err %v also matches %v", err, other)
				}
			}
		})
	}
}

func TestRotateIntermediate(t *testing.T) {
	cfg := Config{KeyAlgorithm: ECDSAP256}
	m := newMesh(t, ECDSAP256)
	in, cc, err := m.root.RotateIntermediate(m.east, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if in.Cert.SerialNumber.Cmp(m.east.Cert.SerialNumber) == 0 || in.Key.Equal(m.east.Key) || in.Cert.PublicKey.(*ecdsa.PublicKey).Equal(m.east.Cert.PublicKey) {
		t.Errorf("rotated intermediate reuses the old serial or key")
	}
	if !bytes.Equal(cc.CACert, in.CertPEM) || !bytes.Equal(cc.RootCert, m.eastCC.RootCert) {
		t.Errorf("rebuilt cacerts: ca-cert.pem is not the new intermediate, or root-cert.pem changed")
	}
	trust, _ := ParseBundle(m.eastCC.RootCert)
	for name, chain := range map[string][]byte{"old": m.eastCC.CertChain, "new": cc.CertChain} {
		if _, err := trust.VerifyChain(chain, time.Now(), ""); err != nil {
			t.Errorf("%s intermediate does not verify to the root: %v", name, err)
		}
	}
	// Workloads of the old and the new intermediate trust each other.
	id := SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	for name, c := range map[string]CACerts{"old": m.eastCC, "new": cc} {
		w := signWorkload(t, c, id)
		if _, err := trust.VerifyChain(w.ChainPEM(), time.Now(), id.String()); err != nil {
			t.Errorf("workload of the %s intermediate: %v", name, err)
		}
	}
}

func TestOfflineRoot(t *testing.T) {
	now := time.Now()
	// The offline root's holder; only its certificate reaches flotilla.
	holder, err := NewRoot(Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewRoot(Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	hubRoot, err := ImportRootCert(holder.CertPEM, now)
	if err != nil {
		t.Fatal(err)
	}
	if hubRoot.HasKey() {
		t.Fatal("offline root must not hold a key")
	}
	if _, err := hubRoot.IssueIntermediate("east", "istio-system", Config{KeyAlgorithm: ECDSAP256}); !errors.Is(err, ErrNoRootKey) {
		t.Errorf("issuing with an offline root: %v, want ErrNoRootKey", err)
	}

	req, err := NewIntermediateRequest("east", "istio-system", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(mustPEM(t, req.CSRPEM))
	if err != nil {
		t.Fatal(err)
	}
	if s := csr.Subject; !slices.Equal(s.Organization, []string{"Istio"}) || s.CommonName != "Intermediate CA" || !slices.Equal(s.Locality, []string{"east"}) ||
		!slices.Equal(csr.DNSNames, []string{"istiod.istio-system.svc"}) {
		t.Errorf("CSR subject %q SAN %v, want the intermediate's", s, csr.DNSNames)
	}
	if bytes.Contains(req.CSRPEM, []byte("PRIVATE")) {
		t.Errorf("CSR carries key material")
	}

	signed, err := holder.SignIntermediateCSR(req.CSRPEM, "istio-system", 0)
	if err != nil {
		t.Fatal(err)
	}
	otherReq, err := NewIntermediateRequest("east", "istio-system", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signedOtherKey, err := holder.SignIntermediateCSR(otherReq.CSRPEM, "istio-system", 0)
	if err != nil {
		t.Fatal(err)
	}
	signedByOther, err := other.SignIntermediateCSR(req.CSRPEM, "istio-system", 0)
	if err != nil {
		t.Fatal(err)
	}
	// The holder forgot pathlen:0 and the SAN (a hand-written openssl config).
	sloppy := func() []byte {
		hk, _ := holder.signer()
		pub := csr.PublicKey
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(7), Subject: csr.Subject,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour * 24),
			BasicConstraintsValid: true, IsCA: true, MaxPathLen: -1,
			KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, holder.Cert, pub, hk)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}()

	for _, tc := range []struct {
		name    string
		signed  []byte
		rootPEM []byte
		want    error
	}{
		{"accepted", signed, holder.CertPEM, nil},
		{"accepted with chain appended", append(bytes.Clone(signed), holder.CertPEM...), holder.CertPEM, nil},
		{"signed for another CSR's key", signedOtherKey, holder.CertPEM, ErrKeyMismatch},
		{"signed by another root", signedByOther, holder.CertPEM, ErrUntrusted},
		{"profile missing pathlen and SAN", sloppy, holder.CertPEM, ErrProfile},
		{"garbage", []byte("garbage"), holder.CertPEM, ErrInvalidPEM},
		{"garbage root", signed, []byte("garbage"), ErrInvalidPEM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := AcceptIntermediate(req, tc.signed, tc.rootPEM, now)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cc, err := NewCACerts(in, hubRoot, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := cc.Validate(now); err != nil {
				t.Errorf("cacerts from the offline root: %v", err)
			}
			if !cc.CAKey.Equal(req.Key) {
				t.Errorf("ca-key.pem is not the key flotilla generated for the CSR")
			}
		})
	}
	if err := CheckIntermediate(mustCert(t, sloppy), "east", "istio-system"); err == nil ||
		!bytes.Contains([]byte(err.Error()), []byte("pathlen is not 0")) || !bytes.Contains([]byte(err.Error()), []byte("SAN lacks DNS:istiod.istio-system.svc")) {
		t.Errorf("CheckIntermediate names every defect, got %v", err)
	}
}

func mustPEM(t *testing.T, b []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	return blk.Bytes
}

func mustCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
