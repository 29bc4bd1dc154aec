package pki

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkIntermediate issues one cluster's intermediate and writes its
// four cacerts files per op, with flotilla and with the openssl CLI as the
// manual procedure (Istio's tools/certs Makefile.selfsigned.mk) does it:
// genrsa or ecparam, req -new, x509 -req with the intermediate's extfile,
// then cat for the chain. Both use the same root. Fifty clusters:
//
//	go test ./pki/ -run '^$' -bench Intermediate -benchtime=50x
func BenchmarkIntermediate(b *testing.B) {
	for _, alg := range []struct {
		name string
		alg  KeyAlgorithm
		gen  func(key string) []string
	}{
		{"rsa4096", RSA4096, func(key string) []string { return []string{"genrsa", "-out", key, "4096"} }},
		{"ecdsa-p256", ECDSAP256, func(key string) []string {
			return []string{"ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", key}
		}},
	} {
		root, err := NewRoot(Config{KeyAlgorithm: alg.alg})
		if err != nil {
			b.Fatal(err)
		}
		b.Run("flotilla/"+alg.name, func(b *testing.B) {
			dir := b.TempDir()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				cluster := fmt.Sprintf("cluster-%d", i)
				in, err := root.IssueIntermediate(cluster, "istio-system", Config{KeyAlgorithm: alg.alg})
				if err != nil {
					b.Fatal(err)
				}
				cc, err := NewCACerts(in, root, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := cc.WriteFiles(filepath.Join(dir, cluster)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("openssl/"+alg.name, func(b *testing.B) {
			if _, err := exec.LookPath("openssl"); err != nil {
				b.Skip("openssl not in PATH")
			}
			dir := b.TempDir()
			rootCert, rootKey := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "root-key.pem")
			if err := os.WriteFile(rootCert, root.CertPEM, 0o644); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(rootKey, root.Key.Reveal(), 0o600); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				cluster := fmt.Sprintf("cluster-%d", i)
				d := filepath.Join(dir, cluster)
				if err := os.MkdirAll(d, 0o755); err != nil {
					b.Fatal(err)
				}
				conf := filepath.Join(d, "intermediate.conf")
				if err := os.WriteFile(conf, []byte(opensslIntermediateConf(cluster, "istio-system")), 0o644); err != nil {
					b.Fatal(err)
				}
				key, csr, cert := filepath.Join(d, CAKeyFile), filepath.Join(d, "cluster-ca.csr"), filepath.Join(d, CACertFile)
				for _, args := range [][]string{
					alg.gen(key),
					{"req", "-sha256", "-new", "-config", conf, "-key", key, "-out", csr},
					{"x509", "-req", "-sha256", "-days", "730", "-CA", rootCert, "-CAkey", rootKey, "-CAcreateserial",
						"-extensions", "req_ext", "-extfile", conf, "-in", csr, "-out", cert},
				} {
					if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
						b.Fatalf("openssl %s: %v: %s", args[0], err, out)
					}
				}
				// cp root-cert.pem; cat ca-cert.pem root-cert.pem > cert-chain.pem
				ca, err := os.ReadFile(cert)
				if err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, RootCertFile), root.CertPEM, 0o644); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, CertChainFile), append(ca, root.CertPEM...), 0o644); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// The openssl result has the same profile, so the comparison is
			// like for like.
			ca, err := os.ReadFile(filepath.Join(dir, "cluster-0", CACertFile))
			if err != nil {
				b.Fatal(err)
			}
			if err := CheckIntermediate(mustParse(b, ca), "cluster-0", "istio-system"); err != nil {
				b.Fatalf("openssl intermediate: %v", err)
			}
		})
	}
}

// opensslIntermediateConf is Istio's intermediate.conf from
// tools/certs/common.mk.
func opensslIntermediateConf(cluster, namespace string) string {
	return `[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 4096
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName=@san
[ san ]
DNS.1 = ` + IstiodDNSName(namespace) + `
[ req_dn ]
O = Istio
CN = Intermediate CA
L = ` + cluster + `
`
}

func mustParse(b *testing.B, data []byte) *x509.Certificate {
	c, err := parseCert(data)
	if err != nil {
		b.Fatal(err)
	}
	return c
}
