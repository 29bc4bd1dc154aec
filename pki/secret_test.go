package pki

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPrivateKeyRedaction: no ordinary way of printing or serialising key
// material shows it.
func TestPrivateKeyRedaction(t *testing.T) {
	m := newMesh(t, ECDSAP256)
	secret := m.eastCC.CAKey.Reveal()
	if !bytes.Contains(secret, []byte("PRIVATE KEY")) {
		t.Fatalf("Reveal does not return the PEM key")
	}
	body := string(bytes.Split(secret, []byte("\n"))[1]) // a line of base64
	type holder struct {
		Key     PrivateKeyPEM
		private PrivateKeyPEM
	}
	h := holder{Key: m.eastCC.CAKey, private: m.eastCC.CAKey}
	jsonCC, err := json.Marshal(m.eastCC)
	if err != nil {
		t.Fatal(err)
	}
	jsonRoot, err := json.Marshal(m.root)
	if err != nil {
		t.Fatal(err)
	}
	text, err := m.eastCC.CAKey.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("cacerts", "key", m.eastCC.CAKey, "cc", m.eastCC)
	wrapped := fmt.Errorf("write %v: %w", m.eastCC.CAKey, errors.New("boom"))

	for name, out := range map[string]string{
		"%v":           fmt.Sprintf("%v", m.eastCC.CAKey),
		"%s":           fmt.Sprintf("%s", m.eastCC.CAKey),
		"%q":           fmt.Sprintf("%q", m.eastCC.CAKey),
		"%x":           fmt.Sprintf("%x", m.eastCC.CAKey),
		"%#v":          fmt.Sprintf("%#v", m.eastCC.CAKey),
		"%+v cacerts":  fmt.Sprintf("%+v", m.eastCC),
		"%#v cacerts":  fmt.Sprintf("%#v", m.eastCC),
		"%+v root":     fmt.Sprintf("%+v", *m.root),
		"%+v holder":   fmt.Sprintf("%+v", h),
		"%v intermed.": fmt.Sprintf("%v", *m.east),
		"json cacerts": string(jsonCC),
		"json root":    string(jsonRoot),
		"text":         string(text),
		"slog":         logBuf.String(),
		"error":        wrapped.Error(),
		"Println":      fmt.Sprintln(m.eastCC.CAKey, &m.eastCC),
		"Sprint":       fmt.Sprint(m.east.Key),
	} {
		if strings.Contains(out, body) || strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("%s leaks key material: %.120s", name, out)
		}
	}
	if !strings.Contains(string(jsonCC), `"caKey":"[REDACTED]"`) {
		t.Errorf("JSON of cacerts: %s, want caKey redacted", jsonCC)
	}
	var zero PrivateKeyPEM
	if !zero.IsZero() || zero.Reveal() != nil {
		t.Errorf("zero key is not empty")
	}
}

func TestWriteFiles(t *testing.T) {
	m := newMesh(t, ECDSAP256)
	dir := filepath.Join(t.TempDir(), "east")
	// A looser ca-key.pem already there is replaced, not rewritten in place.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.eastCC.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		want []byte
		mode os.FileMode
	}{
		{CACertFile, m.east.CertPEM, 0o644},
		{CAKeyFile, m.east.Key.Reveal(), 0o600},
		{RootCertFile, m.root.CertPEM, 0o644},
		{CertChainFile, append(bytes.Clone(m.east.CertPEM), m.root.CertPEM...), 0o644},
	} {
		t.Run(tc.file, func(t *testing.T) {
			p := filepath.Join(dir, tc.file)
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("content differs")
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != tc.mode {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), tc.mode)
			}
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("%d files in %s, want exactly the four", len(entries), dir)
	}
	// Read back, the files are the same cacerts.
	data := map[string][]byte{}
	for _, f := range CACertsFiles {
		data[f], _ = os.ReadFile(filepath.Join(dir, f))
	}
	back, err := ParseCACerts(data)
	if err != nil || !back.Equal(m.eastCC) {
		t.Errorf("ParseCACerts of the exported files: %v, equal=%v", err, back.Equal(m.eastCC))
	}
	delete(data, CertChainFile)
	if _, err := ParseCACerts(data); !errors.Is(err, ErrInvalidCACerts) || !strings.Contains(err.Error(), CertChainFile) {
		t.Errorf("missing cert-chain.pem: %v", err)
	}
}

func TestDescribe(t *testing.T) {
	m := newMesh(t, ECDSAP256)
	info, err := m.eastCC.Describe()
	if err != nil {
		t.Fatal(err)
	}
	in := info.Intermediate
	if in.Subject != "CN=Intermediate CA,O=Istio,L=east" || in.Issuer != "CN=Root CA,O=Istio" || !in.IsCA || in.KeyAlgorithm != "ECDSA-P256" {
		t.Errorf("intermediate %+v", in)
	}
	if len(in.Fingerprint) != 32*3-1 || strings.ToLower(in.Fingerprint) != in.Fingerprint || in.Fingerprint != Fingerprint(m.east.Cert) {
		t.Errorf("fingerprint %q, want 32 lowercase colon-separated bytes", in.Fingerprint)
	}
	if in.Serial == "" || !in.NotAfter.Equal(m.east.Cert.NotAfter) {
		t.Errorf("serial %q not-after %s", in.Serial, in.NotAfter)
	}
	if len(info.Roots) != 1 || info.Roots[0].Fingerprint != Fingerprint(m.root.Cert) {
		t.Errorf("roots %+v", info.Roots)
	}
	if err := m.eastCC.Validate(time.Now().Add(3 * 365 * 24 * time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("Validate after the intermediate expired: %v, want ErrExpired", err)
	}
	bad := m.eastCC
	bad.CAKey = m.westCC.CAKey
	if err := bad.Validate(time.Now()); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("Validate with west's key: %v, want ErrKeyMismatch", err)
	}
}
