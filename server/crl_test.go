package server

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestOfflineRootCRL: with an offline root the hub cannot sign the root's
// CRL: the PKI step says so and how; the request files let openssl sign it
// where the root key is kept; the hub takes back only a CRL of the mesh
// root, listing every revoked intermediate, with a higher number; the
// accepted CRL then goes into ca-crl.pem.
func TestOfflineRootCRL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed: it plays the offline root's holder")
	}
	ctx := context.Background()
	h := newHub(t)
	holder, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	west, err := holder.IssueIntermediate("west", "istio-system", pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	offline, err := pki.ImportRootCert(holder.CertPEM, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		if err := tx.InitCA(state.CA{RootCertPEM: holder.CertPEM, Source: state.CAOffline}, nil); err != nil {
			return err
		}
		return revoke(tx, "west", west.Cert, time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{h: h}
	if _, err := h.ensureCRL(ctx, offline, false, rec); !errors.Is(err, errOfflineCRL) {
		t.Fatalf("ensureCRL with an offline root: %v, want errOfflineCRL", err)
	}

	req, err := h.RootCRLRequest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range req.Files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ROOT-KEY.pem"), holder.Key.Reveal(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", req.Command)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", req.Command, err, out)
	}
	signed, err := os.ReadFile(filepath.Join(dir, "root-crl.pem"))
	if err != nil {
		t.Fatal(err)
	}

	other, _ := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	foreign, _ := other.SignCRL(nil, 99, time.Now(), time.Hour)
	empty, _ := holder.SignCRL(nil, 99, time.Now(), time.Hour)
	for _, tc := range []struct {
		name, pem, want string
	}{
		{"signed by another root", string(foreign), "not signed by the mesh root"},
		{"lists no revoked intermediate", string(empty), "does not revoke west's intermediate"},
		{"not a CRL", string(holder.CertPEM), "invalid PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.AcceptRootCRL(ctx, []byte(tc.pem)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	info, err := h.AcceptRootCRL(ctx, signed)
	if err != nil {
		t.Fatalf("accept the openssl-signed CRL: %v", err)
	}
	if info.NextUpdate.Sub(time.Now()) < (OfflineCRLDays-1)*24*time.Hour {
		t.Errorf("accepted CRL's next update %v, want %d days on", info.NextUpdate, OfflineCRLDays)
	}
	if _, err := h.AcceptRootCRL(ctx, signed); err == nil || !strings.Contains(err.Error(), "want above") {
		t.Errorf("the same CRL accepted twice: %v", err)
	}
	bundle, err := h.ensureCRL(ctx, offline, false, rec)
	if err != nil {
		t.Fatalf("ensureCRL after the accept: %v", err)
	}
	crls, err := pki.ParseCRLs(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if c := pki.CRLFrom(crls, holder.Cert); c == nil || !pki.Revokes(c, west.Cert.SerialNumber) {
		t.Error("ca-crl.pem lacks the accepted root CRL revoking west")
	}
}
