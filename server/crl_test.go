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

// TestEnsureCRL: the CRL bundle holds the root's CRL and one from every
// current intermediate; nothing is signed again while they are fresh; past
// half their life they are signed anew with higher numbers; a replaced
// intermediate's or root's CRL is kept (retired) until its next-update, so
// that workload certificates it issued still pass Envoy's checks.
func TestEnsureCRL(t *testing.T) {
	ctx := context.Background()
	h := newHub(t)
	now := time.Now()
	h.Now = func() time.Time { return now }
	cfg := pki.Config{KeyAlgorithm: pki.ECDSAP256}
	root, _ := pki.NewRoot(cfg)
	issue := func(r *pki.Root, name string) *pki.Intermediate {
		in, err := r.IssueIntermediate(name, "istio-system", cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Store.Update(ctx, func(tx *state.Tx) error { return tx.PutIntermediate(name, in.CertPEM, in.Key.Reveal()) }); err != nil {
			t.Fatal(err)
		}
		return in
	}
	east, west := issue(root, "east"), issue(root, "west")
	ensure := func(r *pki.Root) ([]byte, bool) {
		t.Helper()
		rec := &recorder{h: h}
		b, err := h.ensureCRL(ctx, r, false, rec)
		if err != nil {
			t.Fatal(err)
		}
		return b, len(rec.steps) > 0
	}
	from := func(b []byte, issuer *pki.Intermediate) bool {
		crls, err := pki.ParseCRLs(b)
		return err == nil && pki.CRLFrom(crls, issuer.Cert) != nil
	}
	rootNumber := func(b []byte, r *pki.Root) int64 {
		crls, _ := pki.ParseCRLs(b)
		if c := pki.CRLFrom(crls, r.Cert); c != nil {
			return c.Number.Int64()
		}
		return -1
	}

	if b, signed := ensure(root); b != nil || signed {
		t.Fatalf("nothing revoked: bundle of %d bytes, signed %v; want none", len(b), signed)
	}
	if err := h.Store.Update(ctx, func(tx *state.Tx) error {
		if err := revoke(tx, "west", west.Cert, now); err != nil {
			return err
		}
		return tx.DeleteCluster("west")
	}); err != nil {
		t.Fatal(err)
	}
	stillTrusted := func() int {
		t.Helper()
		var info *CRLInfo
		if err := h.Store.View(ctx, func(tx *state.Tx) error {
			var err error
			info, _, err = crlInfo(tx)
			return err
		}); err != nil || info == nil {
			t.Fatalf("crlInfo: %v %v", info, err)
		}
		return info.StillTrusted
	}
	if err := h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.InitCA(state.CA{RootCertPEM: root.CertPEM, Source: state.CAGenerated}, root.Key.Reveal())
	}); err != nil {
		t.Fatal(err)
	}
	if n := stillTrusted(); n != 1 {
		t.Errorf("revoked intermediates under a trusted root: %d, want 1", n)
	}
	b, signed := ensure(root)
	if !signed || !from(b, east) || rootNumber(b, root) < 1 {
		t.Fatalf("after a revocation: signed %v, east's CRL %v, root CRL number %d", signed, from(b, east), rootNumber(b, root))
	}
	if !from(b, west) {
		t.Error("the revoked intermediate's last CRL is not kept")
	}
	if again, signed := ensure(root); signed || string(again) != string(b) {
		t.Errorf("second ensure signed %v, same bundle %v; want nothing signed", signed, string(again) == string(b))
	}

	now = now.Add(pki.DefaultCRLLifetime/2 + time.Hour)
	b2, signed := ensure(root)
	if !signed || rootNumber(b2, root) <= rootNumber(b, root) || !from(b2, east) {
		t.Errorf("past half the CRL life: signed %v, root number %d -> %d", signed, rootNumber(b, root), rootNumber(b2, root))
	}

	newEast := issue(root, "east")
	b3, _ := ensure(root)
	if !from(b3, newEast) || !from(b3, east) {
		t.Errorf("after east's intermediate changed: new CRL %v, old one kept %v; want both", from(b3, newEast), from(b3, east))
	}

	next, _ := pki.NewRoot(cfg)
	if err := h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.PutCA(state.CA{RootCertPEM: next.CertPEM, Source: state.CAGenerated})
	}); err != nil {
		t.Fatal(err)
	}
	if n := stillTrusted(); n != 0 {
		t.Errorf("revoked intermediates under a root no longer trusted: %d still trusted, want 0", n)
	}
	b4, _ := ensure(next)
	if rootNumber(b4, next) < 0 || rootNumber(b4, root) < 0 {
		t.Errorf("after a new signing root: its CRL %d, the old root's kept %d", rootNumber(b4, next), rootNumber(b4, root))
	}

	now = now.Add(pki.DefaultCRLLifetime + time.Hour)
	b5, _ := ensure(next)
	if from(b5, west) || from(b5, east) || rootNumber(b5, root) >= 0 {
		t.Error("retired CRLs outlive their next-update")
	}
}
