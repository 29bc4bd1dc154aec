package certmanager_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
)

type x509Cert = x509.Certificate

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// TestObjects: the rendered objects carry the intermediate profile and the
// issuer chain each configuration asks for.
func TestObjects(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cfg        certmanager.Config
		kinds      []string
		issuerKind string
		issuerName string
		algorithm  string
		size       int64
	}{
		{"default: the hub's MeshIssuer, ECDSA", certmanager.Config{Cluster: "east", Namespace: "istio-system"},
			[]string{"MeshIssuer", "Certificate", "Issuer"}, "MeshIssuer", certmanager.MeshIssuerName, "ECDSA", 256},
		{"named ClusterIssuer, RSA-4096", certmanager.Config{Cluster: "west", Namespace: "istio-system", KeyAlgorithm: pki.RSA4096,
			RootIssuer: &certmanager.IssuerRef{Name: "corp", Kind: certmanager.ClusterIssuerKind}},
			[]string{"Certificate", "Issuer"}, "ClusterIssuer", "corp", "RSA", 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := certmanager.Objects(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			var crt *unstructured.Unstructured
			for _, o := range objs {
				kinds = append(kinds, o.GetKind())
				if o.GetKind() == "Certificate" {
					crt = o
				}
				if _, ok := o.Object["status"]; ok {
					t.Errorf("%s carries a status", o.GetName())
				}
			}
			if !slices.Equal(kinds, tc.kinds) {
				t.Fatalf("kinds %v, want %v", kinds, tc.kinds)
			}
			spec := crt.Object["spec"].(map[string]any)
			str := func(path ...string) string { s, _, _ := unstructured.NestedString(spec, path...); return s }
			if spec["isCA"] != true || str("commonName") != "Intermediate CA" || str("secretName") != certmanager.IntermediateSecretName {
				t.Errorf("spec %v lacks isCA, CN or secretName", spec)
			}
			loc, _, _ := unstructured.NestedStringSlice(spec, "subject", "localities")
			org, _, _ := unstructured.NestedStringSlice(spec, "subject", "organizations")
			dns, _, _ := unstructured.NestedStringSlice(spec, "dnsNames")
			usages, _, _ := unstructured.NestedStringSlice(spec, "usages")
			if !slices.Equal(loc, []string{tc.cfg.Cluster}) || !slices.Equal(org, []string{"Istio"}) || !slices.Equal(dns, []string{"istiod.istio-system.svc"}) {
				t.Errorf("subject L=%v O=%v SAN %v", loc, org, dns)
			}
			if !slices.Equal(usages, []string{"digital signature", "content commitment", "key encipherment", "cert sign"}) {
				t.Errorf("usages %v", usages)
			}
			if str("issuerRef", "kind") != tc.issuerKind || str("issuerRef", "name") != tc.issuerName {
				t.Errorf("issuerRef %v", spec["issuerRef"])
			}
			size, _, _ := unstructured.NestedInt64(spec, "privateKey", "size")
			if str("privateKey", "algorithm") != tc.algorithm || size != tc.size {
				t.Errorf("privateKey %v", spec["privateKey"])
			}
		})
	}
}

// TestConfigRejected: bad configurations fail before any I/O, saying why.
func TestConfigRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  certmanager.Config
		says string
	}{
		{"bad cluster name", certmanager.Config{Cluster: "East_1", Namespace: "istio-system"}, "invalid cluster name"},
		{"unknown key algorithm", certmanager.Config{Cluster: "east", Namespace: "istio-system", KeyAlgorithm: "DSA"}, "unknown key algorithm"},
		{"renewBefore not below lifetime", certmanager.Config{Cluster: "east", Namespace: "istio-system", Lifetime: 2 * time.Hour, RenewBefore: 3 * time.Hour}, "renewBefore"},
		{"issuer of another kind", certmanager.Config{Cluster: "east", Namespace: "istio-system", RootIssuer: &certmanager.IssuerRef{Name: "x", Kind: "Vault"}}, `kind "Vault"`},
		{"issuer without a name", certmanager.Config{Cluster: "east", Namespace: "istio-system", RootIssuer: &certmanager.IssuerRef{}}, "no name"},
		{"root issuer of another group", certmanager.Config{Cluster: "east", Namespace: "istio-system", RootIssuer: &certmanager.IssuerRef{Name: "x", Group: "issuer.flotilla.dev"}}, `group "issuer.flotilla.dev"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certmanager.Objects(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Objects: %v, want an error saying %q", err, tc.says)
			}
		})
	}
}

// TestCACertsPinned: the projection takes root-cert.pem from the pinned
// bundle and refuses an intermediate outside it, whatever ca.crt says.
func TestCACertsPinned(t *testing.T) {
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	in, err := root.IssueIntermediate("east", "istio-system", pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	issued := &certmanager.Issued{Cert: in.Cert, Key: in.Key, CA: root.CertPEM}
	cc, err := issued.CACerts(pki.NewBundle(root.Cert), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if string(cc.CertChain) != string(in.CertPEM)+string(root.CertPEM) || string(cc.RootCert) != string(root.CertPEM) {
		t.Error("cert-chain.pem is not intermediate then root, or root-cert.pem is not the bundle")
	}
	other, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := issued.CACerts(pki.NewBundle(other.Cert), time.Now()); !errors.Is(err, pki.ErrUntrusted) {
		t.Errorf("intermediate outside the pinned bundle: %v, want ErrUntrusted", err)
	}
}

// TestObjectsCarryNoKey: nothing flotilla renders or applies in
// cert-manager mode (plan and dry runs included) holds a private key.
func TestObjectsCarryNoKey(t *testing.T) {
	objs, err := certmanager.Objects(certmanager.Config{Cluster: "east", Namespace: "istio-system"})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		b, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "PRIVATE KEY") || o.GetKind() == "Secret" {
			t.Errorf("%s %s carries key material", o.GetKind(), o.GetName())
		}
	}
}
