package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestEnsureCRLExternal: with intermediates whose keys cert-manager keeps
// (in hand only while projected), each signs its own CRL when the record
// has none fresh from it; a holder not in hand this pass keeps its CRL; a
// renewed intermediate's predecessor's CRL is retired, not dropped; the
// state never holds an intermediate key.
func TestEnsureCRLExternal(t *testing.T) {
	ctx := context.Background()
	h := newHub(t)
	now := time.Now()
	h.Now = func() time.Time { return now }
	cfg := pki.Config{KeyAlgorithm: pki.ECDSAP256}
	root, _ := pki.NewRoot(cfg)
	issue := func(name string) *pki.Intermediate {
		in, err := root.IssueIntermediate(name, "istio-system", cfg)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	east, west, gone := issue("east"), issue("west"), issue("gone")
	if err := h.Store.Update(ctx, func(tx *state.Tx) error {
		return revokeWithKey(tx, "gone", gone.Cert, gone.Key, now)
	}); err != nil {
		t.Fatal(err)
	}
	holders := map[string]bool{"east": true, "west": true}
	ensure := func(inHand map[string]*pki.Intermediate) ([]byte, []string) {
		t.Helper()
		ext := &externalCAs{Holders: holders, InHand: inHand}
		b, err := h.ensureCRLWith(ctx, root, false, &recorder{h: h}, ext)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ext.Signed)
		return b, ext.Signed
	}
	from := func(b []byte, in *pki.Intermediate) bool {
		crls, err := pki.ParseCRLs(b)
		return err == nil && pki.CRLFrom(crls, in.Cert) != nil
	}

	steps := []struct {
		name   string
		inHand map[string]*pki.Intermediate
		signed []string
		from   []*pki.Intermediate
	}{
		{"first revocation: both in hand sign", map[string]*pki.Intermediate{"east": east, "west": west}, []string{"east", "west"}, []*pki.Intermediate{east, west, gone}},
		{"a pass with east alone signs nothing and keeps west's", map[string]*pki.Intermediate{"east": east}, nil, []*pki.Intermediate{east, west, gone}},
	}
	for _, st := range steps {
		b, signed := ensure(st.inHand)
		if !slices.Equal(signed, st.signed) {
			t.Errorf("%s: signed %v, want %v", st.name, signed, st.signed)
		}
		for _, in := range st.from {
			if !from(b, in) {
				t.Errorf("%s: no CRL from %s's intermediate", st.name, in.Cert.Subject.Locality)
			}
		}
	}
	// cert-manager renewed west: the new one signs, the old one's CRL stays
	// (its workload certificates are still out there) until next-update.
	renewed := issue("west")
	b, signed := ensure(map[string]*pki.Intermediate{"west": renewed})
	if !slices.Equal(signed, []string{"west"}) || !from(b, renewed) || !from(b, west) || !from(b, east) {
		t.Errorf("after west's renewal: signed %v, CRL from the new %v, the old %v, east %v", signed, from(b, renewed), from(b, west), from(b, east))
	}
	// West leaves the holders: its CRL is retired with the rest.
	delete(holders, "west")
	if b, _ := ensure(map[string]*pki.Intermediate{"east": east}); !from(b, renewed) {
		t.Error("a holder that left lost its CRL before its next-update")
	}
	if err := h.Store.View(ctx, func(tx *state.Tx) error {
		for _, n := range []string{"east", "west", "gone"} {
			if _, ok, err := tx.Secret(state.SecretIntermediateKey(n)); err != nil || ok {
				t.Errorf("%s: the state holds an intermediate key (%v)", n, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
