package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"testing"
	"time"
)

func signWorkload(t *testing.T, cc CACerts, id SPIFFEID) *WorkloadCert {
	t.Helper()
	is, err := NewIssuer(cc, 0)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	w, err := is.SignWorkload(WorkloadRequest{ID: id, PublicKey: key.Public()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func csrFor(t *testing.T, uris ...string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestCrossClusterTrust: a workload of east is trusted by west (same mesh,
// same root-cert.pem) and not by a second mesh.
func TestCrossClusterTrust(t *testing.T) {
	m1 := newMesh(t, ECDSAP256)
	m2 := newMesh(t, ECDSAP256)
	id := SPIFFEID{TrustDomain: "cluster.local", Namespace: "sample", ServiceAccount: "helloworld"}
	w := signWorkload(t, m1.eastCC, id)

	westTrust, err := ParseBundle(m1.westCC.RootCert)
	if err != nil {
		t.Fatal(err)
	}
	otherTrust, err := ParseBundle(m2.westCC.RootCert)
	if err != nil {
		t.Fatal(err)
	}
	rotating := NewBundle(m2.root.Cert, m1.root.Cert)
	now := time.Now()
	for _, tc := range []struct {
		name   string
		trust  *Bundle
		wantID string
		want   error
	}{
		{"west root-cert.pem", westTrust, "", nil},
		{"west root-cert.pem expecting the ID", westTrust, id.String(), nil},
		{"bundle of two roots", rotating, id.String(), nil},
		{"second mesh's root", otherTrust, "", ErrUntrusted},
		{"wrong expected ID", westTrust, "spiffe://cluster.local/ns/sample/sa/other", ErrSPIFFEID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, err := tc.trust.VerifyChain(w.ChainPEM(), now, tc.wantID)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if leaf.URIs[0].String() != id.String() {
				t.Errorf("leaf ID %s", leaf.URIs[0])
			}
		})
	}
	// Without the intermediate the leaf does not chain.
	if _, err := westTrust.VerifyChain(w.CertPEM, now, ""); !errors.Is(err, ErrUntrusted) {
		t.Errorf("leaf without its intermediate: %v, want ErrUntrusted", err)
	}
}

func TestSignWorkload(t *testing.T) {
	m := newMesh(t, ECDSAP256)
	is, err := NewIssuer(m.eastCC, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id := SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	for _, tc := range []struct {
		name    string
		req     WorkloadRequest
		wantTTL time.Duration
		want    error
	}{
		{"public key, TTL capped", WorkloadRequest{ID: id, PublicKey: key.Public(), TTL: 48 * time.Hour}, time.Hour, nil},
		{"public key, short TTL", WorkloadRequest{ID: id, PublicKey: key.Public(), TTL: 10 * time.Minute}, 10 * time.Minute, nil},
		{"CSR with the same ID", WorkloadRequest{ID: id, CSR: csrFor(t, id.String())}, time.Hour, nil},
		{"CSR without SANs", WorkloadRequest{ID: id, CSR: csrFor(t)}, time.Hour, nil},
		{"CSR asking for another ID", WorkloadRequest{ID: id, CSR: csrFor(t, "spiffe://cluster.local/ns/kube-system/sa/admin")}, 0, ErrSPIFFEID},
		{"garbage CSR", WorkloadRequest{ID: id, CSR: []byte("garbage")}, 0, ErrInvalidPEM},
		{"invalid ID", WorkloadRequest{ID: SPIFFEID{TrustDomain: "Cluster.Local", Namespace: "default", ServiceAccount: "sleep"}, PublicKey: key.Public()}, 0, ErrSPIFFEID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := is.SignWorkload(tc.req, now)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := w.Cert
			if len(c.URIs) != 1 || c.URIs[0].String() != id.String() || len(c.DNSNames) != 0 {
				t.Errorf("SANs URI=%v DNS=%v, want only %s", c.URIs, c.DNSNames, id)
			}
			if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
				t.Errorf("CA=%v keyUsage=%b, want a leaf with digitalSignature, keyEncipherment", c.IsCA, c.KeyUsage)
			}
			if got := c.NotAfter.Sub(now.Truncate(time.Second)); got < tc.wantTTL-time.Second || got > tc.wantTTL+time.Second {
				t.Errorf("lifetime %s, want %s", got, tc.wantTTL)
			}
			if len(w.Chain) != 3 {
				t.Errorf("chain of %d, want leaf, intermediate, root", len(w.Chain))
			}
		})
	}
	if _, err := is.SignWorkload(WorkloadRequest{ID: id, PublicKey: key.Public(), CSR: csrFor(t)}, now); err == nil {
		t.Errorf("both CSR and public key: want an error")
	}
	if _, err := is.SignWorkload(WorkloadRequest{ID: id}, now); err == nil {
		t.Errorf("neither CSR nor public key: want an error")
	}
}

func TestParseSPIFFEID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SPIFFEID
		ok   bool
	}{
		{"spiffe://cluster.local/ns/default/sa/sleep", SPIFFEID{"cluster.local", "default", "sleep"}, true},
		{"spiffe://mesh1.example/ns/a-b/sa/svc.acct", SPIFFEID{"mesh1.example", "a-b", "svc.acct"}, true},
		{"https://cluster.local/ns/default/sa/sleep", SPIFFEID{}, false},
		{"spiffe://cluster.local/ns/default", SPIFFEID{}, false},
		{"spiffe://cluster.local/sa/x/ns/y", SPIFFEID{}, false},
		{"spiffe://cluster.local:80/ns/default/sa/sleep", SPIFFEID{}, false},
		{"spiffe://cluster.local/ns/Default/sa/sleep", SPIFFEID{}, false},
		{"spiffe:///ns/default/sa/sleep", SPIFFEID{}, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSPIFFEID(tc.in)
			if !tc.ok {
				if !errors.Is(err, ErrSPIFFEID) {
					t.Fatalf("err %v, want ErrSPIFFEID", err)
				}
				return
			}
			if err != nil || got != tc.want || got.String() != tc.in || got.URI().String() != tc.in {
				t.Fatalf("got %+v (%s), %v; want %+v", got, got, err, tc.want)
			}
		})
	}
}
