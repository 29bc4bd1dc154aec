// The mesh's certificate revocation list: the intermediates of clusters
// that left, revoked by the root, and written into every remaining
// cluster's cacerts as ca-crl.pem.

package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/state"
)

// crlKey holds the CRL record in the state. The CRLs are public (istiod
// publishes them in every namespace); only the keys that sign them are
// sealed.
const crlKey = "crl"

// crlRecord is what the hub keeps of revocation.
type crlRecord struct {
	// Number is the last CRL number the hub gave; every CRL it signs takes
	// the next one, so each issuer's numbers only grow (RFC 5280 5.2.3).
	Number int64 `json:"number"`
	// Revoked are the intermediates of clusters that left.
	Revoked []pki.RevokedCert `json:"revoked,omitempty"`
	// Root is the root's CRL (PEM), listing Revoked.
	Root []byte `json:"root,omitempty"`
	// Intermediates are each current intermediate's own (empty) CRL, by
	// cluster: istiod refuses a cacerts whose ca-crl.pem lacks a CRL from
	// any CA of cert-chain.pem, and Envoy (CRL checks on every CA of a
	// chain) refuses a peer whose intermediate signed none.
	Intermediates map[string][]byte `json:"intermediates,omitempty"`
	// Retired are the CRLs of a replaced root or intermediate, kept until
	// their next-update so that workload certificates it issued still pass.
	Retired [][]byte `json:"retired,omitempty"`
}

// bundle is ca-crl.pem: the root's CRL, each intermediate's by cluster
// name, then the retired ones. nil while nothing is revoked.
func (r *crlRecord) bundle() []byte {
	if len(r.Revoked) == 0 {
		return nil
	}
	out := slices.Clone(r.Root)
	for _, name := range slices.Sorted(maps.Keys(r.Intermediates)) {
		out = append(out, r.Intermediates[name]...)
	}
	for _, c := range r.Retired {
		out = append(out, c...)
	}
	return out
}

func readCRL(tx *state.Tx) (*crlRecord, error) {
	r := &crlRecord{}
	if _, err := tx.Value(crlKey, r); err != nil {
		return nil, fmt.Errorf("read CRL record: %w", err)
	}
	return r, nil
}

// revoke adds a leaving cluster's intermediate to the revoked list (once).
func revoke(tx *state.Tx, cluster string, cert *x509.Certificate, at time.Time) error {
	r, err := readCRL(tx)
	if err != nil {
		return err
	}
	for _, rc := range r.Revoked {
		if rc.Serial.Cmp(cert.SerialNumber) == 0 {
			return nil
		}
	}
	r.Revoked = append(r.Revoked, pki.RevokedCert{Cluster: cluster, Serial: cert.SerialNumber, RevokedAt: at.UTC()})
	return tx.PutValue(crlKey, r)
}

// isRevoked reports whether the mesh revoked a certificate of serial.
func (h *Hub) isRevoked(ctx context.Context, cert *x509.Certificate) (bool, error) {
	var revoked bool
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		r, err := readCRL(tx)
		if err != nil {
			return err
		}
		revoked = slices.ContainsFunc(r.Revoked, func(rc pki.RevokedCert) bool { return rc.Serial.Cmp(cert.SerialNumber) == 0 })
		return nil
	})
	return revoked, err
}

// crlActive reports whether the mesh has revoked anything (and so writes
// ca-crl.pem).
func (h *Hub) crlActive(ctx context.Context) (bool, error) {
	var active bool
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		r, err := readCRL(tx)
		active = err == nil && len(r.Revoked) > 0
		return err
	})
	return active, err
}

// errOfflineCRL is the root CRL an offline root must sign.
var errOfflineCRL = errors.New("the root is offline and the hub cannot sign its CRL: run flotilla ca crl request DIR, sign it where the root key is kept (the command prints the openssl line), then flotilla ca crl accept FILE and flotilla apply")

// crlFresh reports whether pemData is one CRL signed by issuer with more
// than half of DefaultCRLLifetime left at now (the reconcile loop re-signs
// well before next-update: Envoy refuses every peer under an expired CRL).
func crlFresh(pemData []byte, issuer *x509.Certificate, now time.Time) (*x509.RevocationList, bool) {
	crls, err := pki.ParseCRLs(pemData)
	if err != nil || len(crls) != 1 || pki.CRLFrom(crls, issuer) == nil {
		return nil, false
	}
	return crls[0], crls[0].NextUpdate.Sub(now) > pki.DefaultCRLLifetime/2
}

// crlValid reports whether pemData is a CRL still before its next-update.
func crlValid(pemData []byte, now time.Time) bool {
	crls, err := pki.ParseCRLs(pemData)
	return err == nil && len(crls) == 1 && now.Before(crls[0].NextUpdate)
}

// rootCRLCurrent: signed by root, fresh, and listing every revoked serial.
func rootCRLCurrent(r *crlRecord, root *x509.Certificate, now time.Time, needFresh bool) bool {
	crl, fresh := crlFresh(r.Root, root, now)
	if crl == nil || (needFresh && !fresh) || !now.Before(crl.NextUpdate) {
		return false
	}
	for _, rc := range r.Revoked {
		if !pki.Revokes(crl, rc.Serial) {
			return false
		}
	}
	return true
}

// ensureCRL brings the CRL record up to date and returns ca-crl.pem (nil
// while nothing is revoked): the root's CRL signed anew when it misses a
// revoked intermediate, was signed by another root or is past half its
// life; each current intermediate's CRL likewise. A dry run signs nothing
// and reports what it would.
func (h *Hub) ensureCRL(ctx context.Context, root *pki.Root, dryRun bool, rec *recorder) ([]byte, error) {
	now := h.now()
	var out []byte
	var signed []string
	do := func(tx *state.Tx) error {
		signed = nil
		r, err := readCRL(tx)
		if err != nil || len(r.Revoked) == 0 {
			return err
		}
		changed := false
		retire := func(old []byte) {
			if len(old) > 0 && crlValid(old, now) && !slices.ContainsFunc(r.Retired, func(b []byte) bool { return bytes.Equal(b, old) }) {
				r.Retired = append(r.Retired, old)
			}
		}
		if !rootCRLCurrent(r, root.Cert, now, true) {
			switch {
			case dryRun:
				signed = append(signed, "root")
			case !root.HasKey():
				// An accepted offline CRL serves until its next-update.
				if !rootCRLCurrent(r, root.Cert, now, false) {
					return errOfflineCRL
				}
			default:
				if crl, _ := crlFresh(r.Root, root.Cert, now); crl == nil {
					retire(r.Root) // a previous root's: its intermediates' workloads still need it
				}
				r.Number++
				if r.Root, err = root.SignCRL(r.Revoked, r.Number, now, pki.DefaultCRLLifetime); err != nil {
					return err
				}
				signed, changed = append(signed, "root"), true
			}
		}
		recs, err := tx.Clusters()
		if err != nil {
			return err
		}
		live := map[string]bool{}
		for _, c := range recs {
			if len(c.IntermediateCertPEM) == 0 || !c.HasIntermediateKey {
				continue
			}
			cert, err := parseCertPEM(c.IntermediateCertPEM)
			if err != nil {
				return fmt.Errorf("%s: stored intermediate: %w", c.Name, err)
			}
			live[c.Name] = true
			if _, fresh := crlFresh(r.Intermediates[c.Name], cert, now); fresh {
				continue
			}
			if dryRun {
				signed = append(signed, c.Name)
				continue
			}
			if crl, _ := crlFresh(r.Intermediates[c.Name], cert, now); crl == nil {
				retire(r.Intermediates[c.Name]) // the cluster's previous intermediate
			}
			key, err := tx.IntermediateKey(c.Name)
			if err != nil {
				return err
			}
			in, err := pki.LoadIntermediate(c.Name, "", c.IntermediateCertPEM, pki.NewPrivateKeyPEM(key))
			if err != nil {
				return err
			}
			r.Number++
			crl, err := in.SignCRL(r.Number, now, pki.DefaultCRLLifetime)
			if err != nil {
				return fmt.Errorf("%w (its intermediate predates cRLSign: flotilla ca rotate intermediate %s)", err, c.Name)
			}
			if r.Intermediates == nil {
				r.Intermediates = map[string][]byte{}
			}
			r.Intermediates[c.Name] = crl
			signed, changed = append(signed, c.Name), true
		}
		for name, old := range r.Intermediates {
			if !live[name] && !dryRun {
				retire(old)
				delete(r.Intermediates, name)
				changed = true
			}
		}
		kept := r.Retired[:0]
		for _, c := range r.Retired {
			if crlValid(c, now) {
				kept = append(kept, c)
			}
		}
		if len(kept) != len(r.Retired) {
			changed = true
		}
		r.Retired = kept
		out = r.bundle()
		if changed && !dryRun {
			return tx.PutValue(crlKey, r)
		}
		return nil
	}
	var err error
	if dryRun {
		err = h.Store.View(ctx, do)
	} else {
		err = h.Store.Update(ctx, do)
	}
	if err != nil {
		return nil, err
	}
	if len(signed) > 0 {
		action := "signed"
		if dryRun {
			action = "would sign"
		}
		rec.add(ctx, Step{Step: "CRL", Action: action, Detail: fmt.Sprintf("CRLs of %v", signed)})
	}
	return out, nil
}

// CRLInfo is the hub's current CRL as status, check and ca show give it.
type CRLInfo struct {
	// Number is the root CRL's number.
	Number     int64     `json:"number"`
	ThisUpdate time.Time `json:"thisUpdate"`
	NextUpdate time.Time `json:"nextUpdate"`
	// SHA256 is the hash of the whole ca-crl.pem the hub writes.
	SHA256 string `json:"sha256"`
}

// RevokedInfo is one revoked intermediate, as ca show lists it.
type RevokedInfo struct {
	Cluster   string    `json:"cluster"`
	Serial    string    `json:"serial"`
	RevokedAt time.Time `json:"revokedAt"`
}

// crlInfo describes the stored CRL; nil while nothing is revoked.
func crlInfo(tx *state.Tx) (*CRLInfo, []RevokedInfo, error) {
	r, err := readCRL(tx)
	if err != nil || len(r.Revoked) == 0 {
		return nil, nil, err
	}
	var revoked []RevokedInfo
	for _, rc := range r.Revoked {
		revoked = append(revoked, RevokedInfo{Cluster: rc.Cluster, Serial: rc.SerialHex(), RevokedAt: rc.RevokedAt})
	}
	b := r.bundle()
	info := &CRLInfo{SHA256: crlHash(b)}
	if crls, err := pki.ParseCRLs(r.Root); err == nil {
		info.Number, info.ThisUpdate, info.NextUpdate = crls[0].Number.Int64(), crls[0].ThisUpdate, crls[0].NextUpdate
	}
	return info, revoked, nil
}

func crlHash(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
