package cli_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
)

// TestOfflineRootRevocation: with an offline root, west leaving the mesh
// stops apply at the root's CRL, saying how to have it signed; ca crl
// request writes what openssl needs, the root's holder signs with it, ca
// crl accept takes the CRL back; apply then writes it into east's cacerts,
// and ca show (table and JSON) lists west's revoked intermediate.
func TestOfflineRootRevocation(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed: it plays the offline root's holder")
	}
	l := testLab.Get(t)
	resetClusters(t, l)
	e := keyedEnv(t)
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(e.dir, "root-cert.pem")
	os.WriteFile(rootFile, root.CertPEM, 0o644)
	doc := func(clusters ...string) string {
		path := filepath.Join(e.dir, "mesh-"+strings.Join(clusters, "-")+".yaml")
		body := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256, offline: true, root: {certFile: %s}}
  clusters:
`, rootFile)
		for i, c := range clusters {
			body += fmt.Sprintf("  - {name: %s, context: %s, network: network%d, kubeconfig: %s}\n", c, c, i+1, l.Kubeconfig)
		}
		os.WriteFile(path, []byte(body), 0o600)
		return path
	}
	both, eastOnly := doc("east", "west"), doc("east")

	e.run(t, "apply", "-f", both) // stops at the missing intermediates
	csrDir := filepath.Join(e.dir, "csr")
	if _, stderr, code := e.run(t, "ca", "csr", "-f", both, csrDir); code != 0 {
		t.Fatal(stderr)
	}
	var westSerial string
	for _, c := range []string{"east", "west"} {
		csr, _ := os.ReadFile(filepath.Join(csrDir, c+".csr.pem"))
		cert, err := root.SignIntermediateCSR(csr, "istio-system", 24*time.Hour*365)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(e.dir, c+".pem")
		os.WriteFile(f, cert, 0o644)
		if _, stderr, code := e.run(t, "ca", "accept", "-f", both, "--cluster", c, f); code != 0 {
			t.Fatalf("%s: ca accept: %s", c, stderr)
		}
		if c == "west" {
			westSerial = serialOf(t, cert)
		}
	}
	if _, stderr, code := e.run(t, "apply", "-f", both); code != 0 {
		t.Fatalf("apply with both intermediates: %s", stderr)
	}

	// West leaves: the hub cannot sign the root's CRL.
	_, stderr, code := e.run(t, "apply", "-f", eastOnly)
	if code == 0 || !strings.Contains(stderr, "flotilla ca crl request") {
		t.Fatalf("apply without west, offline root: exit %d, stderr %q; want a failure naming ca crl request", code, stderr)
	}
	crlDir := filepath.Join(e.dir, "crl")
	out, stderr, code := e.run(t, "ca", "crl", "request", crlDir)
	if code != 0 || !strings.Contains(out, "openssl ca -gencrl") || !strings.Contains(out, westSerial) {
		t.Fatalf("ca crl request: exit %d, %q %q", code, out, stderr)
	}
	os.WriteFile(filepath.Join(crlDir, "ROOT-KEY.pem"), root.Key.Reveal(), 0o600)
	sign := exec.Command("openssl", "ca", "-gencrl", "-config", "openssl.cnf", "-keyfile", "ROOT-KEY.pem", "-out", "root-crl.pem")
	sign.Dir = crlDir
	if b, err := sign.CombinedOutput(); err != nil {
		t.Fatalf("the root's holder signs: %v\n%s", err, b)
	}
	if out, stderr, code := e.run(t, "ca", "crl", "accept", filepath.Join(crlDir, "root-crl.pem")); code != 0 {
		t.Fatalf("ca crl accept: %s %s", out, stderr)
	}
	if _, stderr, code := e.run(t, "apply", "-f", eastOnly); code != 0 {
		t.Fatalf("apply after the CRL was accepted: %s", stderr)
	}
	kc, err := l.Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := pki.ReadCACerts(context.Background(), kc, "istio-system")
	if err != nil || cc == nil {
		t.Fatalf("east: cacerts: %v", err)
	}
	crls, err := pki.ParseCRLs(cc.CACerts.CRL)
	if err != nil || pki.CRLFrom(crls, root.Cert) == nil {
		t.Fatalf("east's cacerts lacks the offline-signed root CRL: %v", err)
	}
	if err := cc.CACerts.Validate(time.Now()); err != nil {
		t.Errorf("east's cacerts: %v", err)
	}
	table, _, _ := e.run(t, "ca", "show")
	if !strings.Contains(table, "revoked intermediates") || !strings.Contains(table, westSerial) {
		t.Errorf("ca show does not list west's revoked intermediate %s:\n%s", westSerial, table)
	}
	js, _, _ := e.run(t, "ca", "show", "-o", "json")
	if !strings.Contains(js, `"cluster": "west"`) || !strings.Contains(js, `"serial": "`+westSerial+`"`) {
		t.Errorf("ca show -o json does not list west's revoked intermediate %s:\n%s", westSerial, js)
	}
}

func serialOf(t *testing.T, certPEM []byte) string {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pki.Describe(c).Serial
}
