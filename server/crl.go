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
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
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
	return revokeWithKey(tx, cluster, cert, pki.PrivateKeyPEM{}, at)
}

// revokeWithKey is revoke with the intermediate's key in hand (read from
// the leaving cluster's cacerts, in cert-manager mode), for its last CRL;
// a zero key is looked up in the state.
func revokeWithKey(tx *state.Tx, cluster string, cert *x509.Certificate, inHand pki.PrivateKeyPEM, at time.Time) error {
	r, err := readCRL(tx)
	if err != nil {
		return err
	}
	for _, rc := range r.Revoked {
		if rc.Serial.Cmp(cert.SerialNumber) == 0 {
			return nil
		}
	}
	r.Revoked = append(r.Revoked, pki.RevokedCert{Cluster: cluster, Serial: cert.SerialNumber, RevokedAt: at.UTC(),
		Subject: opensslDN(cert), NotAfter: cert.NotAfter.UTC(), IssuerKeyID: cert.AuthorityKeyId})
	// Its own CRL stays in ca-crl.pem until next-update, its key being
	// about to go: a peer's Envoy then refuses its workloads for the
	// root's revocation, not only for a missing CRL.
	key, ok, err := tx.Secret(state.SecretIntermediateKey(cluster))
	if !inHand.IsZero() {
		key, ok, err = inHand.Reveal(), true, nil
	}
	if err == nil && ok && pki.CanSignCRL(cert) {
		if in, err := pki.LoadIntermediate(cluster, "", encodePEMCert(cert), pki.NewPrivateKeyPEM(key)); err == nil {
			r.Number++
			crl, err := in.SignCRL(r.Number, at, pki.DefaultCRLLifetime)
			if err != nil {
				return err
			}
			r.Retired = append(r.Retired, crl)
		}
	}
	delete(r.Intermediates, cluster)
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
	return h.ensureCRLWith(ctx, root, dryRun, rec, nil)
}

// externalCAs are the intermediates whose keys the hub does not keep
// (cert-manager mode: cert-manager keeps them in each cluster).
type externalCAs struct {
	// Holders are the mesh's clusters with such an intermediate: their
	// CRLs stay in ca-crl.pem while they are in the mesh.
	Holders map[string]bool
	// InHand are those read in this pass, each of which signs its own CRL
	// when the record has none fresh from it.
	InHand map[string]*pki.Intermediate
	// Signed is set to those of InHand that signed a new CRL.
	Signed []string
}

// ensureCRLWith is ensureCRL with the intermediates in ext (nil: built-in
// PKI, the state's intermediates).
func (h *Hub) ensureCRLWith(ctx context.Context, root *pki.Root, dryRun bool, rec *recorder, ext *externalCAs) ([]byte, error) {
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
		if ext != nil {
			ext.Signed = nil // the transaction may run again
			recs = nil       // the state keeps no intermediate of cert-manager's
			for name := range ext.Holders {
				live[name] = true
			}
			for _, name := range slices.Sorted(maps.Keys(ext.InHand)) {
				in := ext.InHand[name]
				live[name] = true
				crl, fresh := crlFresh(r.Intermediates[name], in.Cert, now)
				switch {
				case fresh:
					continue
				case dryRun:
					signed = append(signed, name)
					continue
				case crl == nil:
					retire(r.Intermediates[name]) // the cluster's previous intermediate
				}
				r.Number++
				signedCRL, err := in.SignCRL(r.Number, now, pki.DefaultCRLLifetime)
				if err != nil {
					return fmt.Errorf("%s: %w (its intermediate predates cRLSign: flotilla ca rotate intermediate %s)", name, err, name)
				}
				if r.Intermediates == nil {
					r.Intermediates = map[string][]byte{}
				}
				r.Intermediates[name] = signedCRL
				signed, changed = append(signed, name), true
				ext.Signed = append(ext.Signed, name)
			}
		}
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
	// StillTrusted counts the revoked intermediates under a root the mesh
	// still trusts: only a CRL keeps their workloads out.
	StillTrusted int `json:"stillTrusted"`
	// Unenforced says why the mesh's revocations do not reach the data
	// plane ("" when they do): the hub holds no key of the root that signed
	// the intermediates, or istiod publishes no CRL.
	Unenforced string `json:"unenforced,omitempty"`
}

// crlUnenforced is why the revocation of p's intermediates does not reach
// the data plane; "" when it does. In cert-manager mode with an issuer of
// the user's (issuerRef), that issuer's root signs the intermediates and
// its key is not the hub's. With the csr-agent, istiod's CA is off, and an
// istiod without a CA neither loads cacerts nor runs the controller that
// publishes the istio-ca-crl ConfigMap the sidecars mount (Istio's
// maybeCreateCA, shouldStartNsController).
func crlUnenforced(p *plan) string {
	switch {
	case p.PKI.Mode == spec.PKICertManager && p.PKI.IssuerRef != nil:
		return fmt.Sprintf("pki.certManager.issuerRef: %s %s signs the intermediates with a root whose key the hub does not hold, so the hub cannot sign the root's CRL and writes no %s: revoked intermediates stay trusted", p.PKI.IssuerRef.Kind, p.PKI.IssuerRef.Name, pki.CRLFile)
	case p.PKI.Mode == spec.PKICertManager && p.PKI.CSRAgent != nil:
		return fmt.Sprintf("pki.certManager.csrAgent: istiod's CA is off, so istiod neither loads cacerts nor publishes its %s as the %s ConfigMap the sidecars mount: revoked intermediates stay trusted by the data plane", pki.CRLFile, pki.CRLConfigMap)
	}
	return ""
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
	if ca, ok, err := tx.CA(); err == nil && ok {
		if trust, err := pki.ParseBundle(ca.Bundle()); err == nil {
			for _, rc := range r.Revoked {
				if len(rc.IssuerKeyID) == 0 || slices.ContainsFunc(trust.Roots, func(c *x509.Certificate) bool { return bytes.Equal(c.SubjectKeyId, rc.IssuerKeyID) }) {
					info.StillTrusted++
				}
			}
		}
	}
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

// opensslDN is cert's subject as openssl's index.txt writes it.
func opensslDN(cert *x509.Certificate) string {
	var b strings.Builder
	for _, o := range cert.Subject.Organization {
		b.WriteString("/O=" + o)
	}
	for _, l := range cert.Subject.Locality {
		b.WriteString("/L=" + l)
	}
	if cn := cert.Subject.CommonName; cn != "" {
		b.WriteString("/CN=" + cn)
	}
	return b.String()
}

// OfflineCRLDays is the validity the offline signing config asks for: the
// hub cannot re-sign an offline root's CRL, so it lasts longer than
// DefaultCRLLifetime, and check warns when a quarter of that is left.
const OfflineCRLDays = 30

// CRLRequest is what the holder of an offline root needs to sign the
// root's CRL with openssl: the database of revoked intermediates, the next
// CRL number and a config; Files maps each file name to its content.
type CRLRequest struct {
	Files   map[string][]byte
	Command string
	Revoked []RevokedInfo
}

// RootCRLRequest prepares the offline signing of the root's CRL (the way
// intermediates are signed offline from CSRs).
func (h *Hub) RootCRLRequest(ctx context.Context) (*CRLRequest, error) {
	root, _, found, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if !found {
		return nil, errors.New("the state holds no root yet: run flotilla apply -f mesh.yaml")
	}
	var r *crlRecord
	if err := h.Store.View(ctx, func(tx *state.Tx) error { r, err = readCRL(tx); return err }); err != nil {
		return nil, err
	}
	if len(r.Revoked) == 0 {
		return nil, errors.New("no intermediate is revoked: no CRL is needed")
	}
	req := &CRLRequest{Files: map[string][]byte{
		"index.txt":      pki.OpenSSLIndex(r.Revoked),
		"index.txt.attr": []byte("unique_subject = no\n"),
		// openssl ca takes the number in hex and writes the next one back.
		"crlnumber":     []byte(pki.EvenHex(big.NewInt(r.Number+1)) + "\n"),
		"root-cert.pem": root.CertPEM,
		"openssl.cnf": []byte(fmt.Sprintf(`# flotilla: sign the mesh root's CRL (run in this directory)
[ ca ]
default_ca = flotilla_crl

[ flotilla_crl ]
database         = ./index.txt
crlnumber        = ./crlnumber
certificate      = ./root-cert.pem
default_md       = sha256
default_crl_days = %d
crl_extensions   = crl_ext

[ crl_ext ]
authorityKeyIdentifier = keyid:always
`, OfflineCRLDays)),
	}}
	req.Command = "openssl ca -gencrl -config openssl.cnf -keyfile ROOT-KEY.pem -out root-crl.pem"
	for _, rc := range r.Revoked {
		req.Revoked = append(req.Revoked, RevokedInfo{Cluster: rc.Cluster, Serial: rc.SerialHex(), RevokedAt: rc.RevokedAt})
	}
	return req, nil
}

// AcceptRootCRL takes back the root's CRL signed offline: one CRL, signed
// by the mesh root, valid now, listing every revoked intermediate, with a
// number above any the hub gave. The next apply writes it into every
// cacerts.
func (h *Hub) AcceptRootCRL(ctx context.Context, pemData []byte) (*CRLInfo, error) {
	root, _, found, err := h.loadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if !found {
		return nil, errors.New("the state holds no root yet: run flotilla apply -f mesh.yaml")
	}
	crls, err := pki.ParseCRLs(pemData)
	if err != nil {
		return nil, fmt.Errorf("signed CRL: %w", err)
	}
	if len(crls) != 1 {
		return nil, fmt.Errorf("signed CRL: want exactly one CRL, found %d", len(crls))
	}
	crl, now := crls[0], h.now()
	switch {
	case pki.CRLFrom(crls, root.Cert) == nil:
		return nil, fmt.Errorf("signed CRL: not signed by the mesh root %s", pki.Fingerprint(root.Cert))
	case crl.Number == nil:
		return nil, errors.New("signed CRL: no CRL number (crlnumber in the openssl config)")
	case !now.Before(crl.NextUpdate) || now.Before(crl.ThisUpdate):
		return nil, fmt.Errorf("signed CRL: valid %s to %s, not now", crl.ThisUpdate.UTC().Format(time.RFC3339), crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	var info *CRLInfo
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		r, err := readCRL(tx)
		if err != nil {
			return err
		}
		for _, rc := range r.Revoked {
			if !pki.Revokes(crl, rc.Serial) {
				return fmt.Errorf("signed CRL: does not revoke %s's intermediate %s (sign it from a fresh flotilla ca crl request)", rc.Cluster, rc.SerialHex())
			}
		}
		if crl.Number.Int64() <= r.Number {
			return fmt.Errorf("signed CRL: number %d, want above %d (sign it from a fresh flotilla ca crl request)", crl.Number.Int64(), r.Number)
		}
		r.Number, r.Root = crl.Number.Int64(), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw})
		if err := tx.PutValue(crlKey, r); err != nil {
			return err
		}
		info, _, err = crlInfo(tx)
		return err
	})
	return info, err
}

func encodePEMCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
