package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

var (
	bucketMeta     = []byte("meta")
	bucketSpec     = []byte("spec")
	bucketClusters = []byte("clusters")
	bucketCA       = []byte("ca")
	bucketSecrets  = []byte("secrets")
	bucketJournal  = []byte("journal")
	bucketValues   = []byte("values")
	allBuckets     = [][]byte{bucketMeta, bucketSpec, bucketClusters, bucketCA, bucketSecrets, bucketJournal, bucketValues}

	keySchema   = []byte("schema")
	keyKeyCheck = []byte("key-check")
	keyCurrent  = []byte("current")

	// keyCheckPlain is sealed into meta under the state key the first time a
	// secret is sealed; opening it proves a later key is the same key.
	keyCheckPlain = []byte("flotilla state key check v1")
)

// Names of the secrets the typed API seals; PutSecret/Secret share this namespace.
const (
	SecretRootKey = "ca/root-key"
	// SecretNextRootKey is the key of the root a rotation brings in, until
	// it becomes the signing root.
	SecretNextRootKey = "ca/next-root-key"
)

// SecretIntermediateKey is the secret name of a cluster's intermediate CA key.
func SecretIntermediateKey(cluster string) string { return "clusters/" + cluster + "/intermediate-key" }

// SecretPendingIntermediateKey holds the key of an intermediate whose CSR
// waits for an offline root, so that the current intermediate keeps working.
func SecretPendingIntermediateKey(cluster string) string {
	return "clusters/" + cluster + "/pending-intermediate-key"
}

// ErrNotFound is wrapped by lookups that must find something.
var ErrNotFound = errors.New("not found")

// ErrCAExists is returned by InitCA when the state already has a CA: the root
// is never replaced by accident.
var ErrCAExists = errors.New("state already has a CA")

// Tx is a transaction on the state. It is valid only inside the View or
// Update callback that received it; do not nest transactions.
type Tx struct {
	tx txn
	s  *Store
}

func now() time.Time { return time.Now().UTC() }

func (t *Tx) getJSON(bucket, key []byte, v any) (bool, error) {
	raw := t.tx.Bucket(bucket).Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("state: decode %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

func (t *Tx) putJSON(bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("state: encode %s/%s: %w", bucket, key, err)
	}
	if err := t.tx.Bucket(bucket).Put(key, raw); err != nil {
		return fmt.Errorf("state: write %s/%s: %w", bucket, key, err)
	}
	return nil
}

// --- secrets ---

// PutSecret seals value under the state key and stores it as name.
func (t *Tx) PutSecret(name string, value []byte) error {
	sl := t.s.sealer
	if sl == nil {
		return fmt.Errorf("state: seal %s: %w", name, ErrKeyRequired)
	}
	meta := t.tx.Bucket(bucketMeta)
	if meta.Get(keyKeyCheck) == nil {
		kc, err := sl.seal(string(bucketMeta), string(keyKeyCheck), keyCheckPlain)
		if err != nil {
			return err
		}
		if err := meta.Put(keyKeyCheck, kc); err != nil {
			return fmt.Errorf("state: write key check: %w", err)
		}
	}
	sealed, err := sl.seal(string(bucketSecrets), name, value)
	if err != nil {
		return fmt.Errorf("state: seal %s: %w", name, err)
	}
	if err := t.tx.Bucket(bucketSecrets).Put([]byte(name), sealed); err != nil {
		return fmt.Errorf("state: write secret %s: %w", name, err)
	}
	return nil
}

// Secret unseals the secret called name; ok is false when there is none.
func (t *Tx) Secret(name string) (value []byte, ok bool, err error) {
	sealed := t.tx.Bucket(bucketSecrets).Get([]byte(name))
	if sealed == nil {
		return nil, false, nil
	}
	if t.s.sealer == nil {
		return nil, false, fmt.Errorf("state: unseal %s: %w", name, ErrKeyRequired)
	}
	plain, err := t.s.sealer.open(string(bucketSecrets), name, sealed)
	if err != nil {
		return nil, false, fmt.Errorf("state: unseal %s: %w", name, ErrTampered)
	}
	return plain, true, nil
}

// HasSecret reports whether a secret called name is stored (no key needed).
func (t *Tx) HasSecret(name string) bool { return t.tx.Bucket(bucketSecrets).Get([]byte(name)) != nil }

// DeleteSecret removes the secret called name, if any.
func (t *Tx) DeleteSecret(name string) error {
	if err := t.tx.Bucket(bucketSecrets).Delete([]byte(name)); err != nil {
		return fmt.Errorf("state: delete secret %s: %w", name, err)
	}
	return nil
}

// --- spec ---

// StoredSpec is the last spec applied.
type StoredSpec struct {
	// Raw is the document as the user wrote it.
	Raw      []byte    `json:"raw"`
	Hash     string    `json:"hash"`
	StoredAt time.Time `json:"storedAt"`
}

// PutSpec records the spec being applied.
func (t *Tx) PutSpec(raw []byte, hash string) error {
	return t.putJSON(bucketSpec, keyCurrent, StoredSpec{Raw: raw, Hash: hash, StoredAt: now()})
}

// Spec returns the stored spec; ok is false before the first apply.
func (t *Tx) Spec() (spec StoredSpec, ok bool, err error) {
	ok, err = t.getJSON(bucketSpec, keyCurrent, &spec)
	return spec, ok, err
}

// --- CA ---

// CASource says where the root came from.
type CASource string

const (
	// CAGenerated: flotilla made the root; the state holds its key.
	CAGenerated CASource = "generated"
	// CAImported: the user brought the root and its key.
	CAImported CASource = "imported"
	// CAOffline: the state holds only the root certificate; intermediates
	// are signed elsewhere from CSRs.
	CAOffline CASource = "offline"
)

// CA is the mesh's root of trust.
type CA struct {
	RootCertPEM []byte `json:"rootCertPEM"`
	// BundlePEM is every root the mesh trusts: the root alone, or the old and
	// new roots during a root rotation. Empty means RootCertPEM.
	BundlePEM []byte `json:"bundlePEM,omitempty"`
	// NextRootCertPEM is the root a rotation brings in: trusted (it is in
	// the bundle) but not yet signing. Its key is SecretNextRootKey.
	NextRootCertPEM []byte    `json:"nextRootCertPEM,omitempty"`
	Source          CASource  `json:"source"`
	UpdatedAt       time.Time `json:"updatedAt"`
	// HasRootKey is filled on read: whether the sealed root key is stored.
	HasRootKey bool `json:"-"`
}

// Bundle returns the roots to trust.
func (c CA) Bundle() []byte {
	if len(c.BundlePEM) > 0 {
		return c.BundlePEM
	}
	return c.RootCertPEM
}

// CA returns the stored CA; ok is false when there is none yet.
func (t *Tx) CA() (ca CA, ok bool, err error) {
	if ok, err = t.getJSON(bucketCA, keyCurrent, &ca); !ok || err != nil {
		return CA{}, ok, err
	}
	ca.HasRootKey = t.HasSecret(SecretRootKey)
	return ca, true, nil
}

// InitCA stores the first CA and its root key (nil for an offline root)
// together. It fails with ErrCAExists when a CA is already stored.
func (t *Tx) InitCA(ca CA, rootKeyPEM []byte) error {
	if t.tx.Bucket(bucketCA).Get(keyCurrent) != nil {
		return ErrCAExists
	}
	if err := t.PutCA(ca); err != nil {
		return err
	}
	if rootKeyPEM != nil {
		return t.PutRootKey(rootKeyPEM)
	}
	return t.DeleteSecret(SecretRootKey)
}

// PutCA replaces the stored CA record; the root key is left as it is.
func (t *Tx) PutCA(ca CA) error {
	ca.UpdatedAt = now()
	return t.putJSON(bucketCA, keyCurrent, ca)
}

// PutRootKey seals and stores the root key.
func (t *Tx) PutRootKey(keyPEM []byte) error { return t.PutSecret(SecretRootKey, keyPEM) }

// DeleteRootKey forgets the root key (the root goes offline).
func (t *Tx) DeleteRootKey() error { return t.DeleteSecret(SecretRootKey) }

// RootKey unseals the root key; it wraps ErrNotFound when none is stored.
func (t *Tx) RootKey() ([]byte, error) {
	k, ok, err := t.Secret(SecretRootKey)
	if err == nil && !ok {
		err = fmt.Errorf("state: root key: %w", ErrNotFound)
	}
	return k, err
}

// --- clusters ---

// ClusterRecord is what the hub remembers about one cluster.
type ClusterRecord struct {
	Name                string `json:"name"`
	IntermediateCertPEM []byte `json:"intermediateCertPEM,omitempty"`
	// IntermediateCSRPEM is a CSR waiting for an offline root to sign it.
	IntermediateCSRPEM []byte        `json:"intermediateCSRPEM,omitempty"`
	ReaderTokens       []ReaderToken `json:"readerTokens,omitempty"`
	// Status is the last observed status, opaque to the state.
	Status           json.RawMessage `json:"status,omitempty"`
	StatusObservedAt time.Time       `json:"statusObservedAt,omitzero"`
	UpdatedAt        time.Time       `json:"updatedAt"`
	// HasIntermediateKey is filled on read: whether the sealed key is stored.
	HasIntermediateKey bool `json:"-"`
}

// ReaderToken is a token minted for this cluster's reader service account
// and handed to another cluster in a remote secret.
type ReaderToken struct {
	// ReadBy is the cluster that holds the token.
	ReadBy   string    `json:"readBy"`
	IssuedAt time.Time `json:"issuedAt"`
	// ExpiresAt is zero for a token that does not expire (legacy token secret).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// Cluster returns the record of the cluster called name.
func (t *Tx) Cluster(name string) (rec ClusterRecord, ok bool, err error) {
	if ok, err = t.getJSON(bucketClusters, []byte(name), &rec); !ok || err != nil {
		return ClusterRecord{}, ok, err
	}
	rec.HasIntermediateKey = t.HasSecret(SecretIntermediateKey(name))
	return rec, true, nil
}

// Clusters returns every cluster record, by name.
func (t *Tx) Clusters() ([]ClusterRecord, error) {
	var out []ClusterRecord
	err := t.tx.Bucket(bucketClusters).ForEach(func(k, _ []byte) error {
		rec, _, err := t.Cluster(string(k))
		out = append(out, rec)
		return err
	})
	return out, err
}

// PutCluster stores rec as the record of rec.Name (sealed keys are untouched).
func (t *Tx) PutCluster(rec ClusterRecord) error {
	if rec.Name == "" {
		return errors.New("state: cluster record without a name")
	}
	rec.UpdatedAt = now()
	return t.putJSON(bucketClusters, []byte(rec.Name), rec)
}

// modifyCluster applies fn to the record of name, creating it if needed.
func (t *Tx) modifyCluster(name string, fn func(*ClusterRecord) error) error {
	rec, ok, err := t.Cluster(name)
	if err != nil {
		return err
	}
	if !ok {
		rec = ClusterRecord{Name: name}
	}
	if err := fn(&rec); err != nil {
		return err
	}
	return t.PutCluster(rec)
}

// DeleteCluster removes a cluster's record and its sealed keys.
func (t *Tx) DeleteCluster(name string) error {
	if err := t.tx.Bucket(bucketClusters).Delete([]byte(name)); err != nil {
		return fmt.Errorf("state: delete cluster %s: %w", name, err)
	}
	if err := t.DeleteSecret(SecretIntermediateKey(name)); err != nil {
		return err
	}
	return t.DeleteSecret(SecretPendingIntermediateKey(name))
}

// PutIntermediate stores a cluster's intermediate certificate with its key,
// sealed. With keyPEM nil, the key of a pending CSR (PutIntermediateCSR)
// becomes the intermediate's key; without one, the current key stays.
func (t *Tx) PutIntermediate(cluster string, certPEM, keyPEM []byte) error {
	if keyPEM == nil {
		pending, ok, err := t.Secret(SecretPendingIntermediateKey(cluster))
		switch {
		case err != nil:
			return err
		case ok:
			keyPEM = pending
		case !t.HasSecret(SecretIntermediateKey(cluster)):
			return fmt.Errorf("state: cluster %s: intermediate certificate without a key (none given, none pending)", cluster)
		}
	}
	if keyPEM != nil {
		if err := t.PutSecret(SecretIntermediateKey(cluster), keyPEM); err != nil {
			return err
		}
	}
	if err := t.DeleteSecret(SecretPendingIntermediateKey(cluster)); err != nil {
		return err
	}
	return t.modifyCluster(cluster, func(r *ClusterRecord) error {
		r.IntermediateCertPEM = certPEM
		r.IntermediateCSRPEM = nil
		return nil
	})
}

// PutIntermediateCSR records a CSR for an offline root to sign, with the key
// it was made from (sealed, kept apart from the current intermediate's key).
func (t *Tx) PutIntermediateCSR(cluster string, csrPEM, keyPEM []byte) error {
	if err := t.PutSecret(SecretPendingIntermediateKey(cluster), keyPEM); err != nil {
		return err
	}
	return t.modifyCluster(cluster, func(r *ClusterRecord) error {
		r.IntermediateCSRPEM = csrPEM
		return nil
	})
}

// IntermediateKey unseals a cluster's intermediate key; it wraps ErrNotFound
// when none is stored.
func (t *Tx) IntermediateKey(cluster string) ([]byte, error) {
	k, ok, err := t.Secret(SecretIntermediateKey(cluster))
	if err == nil && !ok {
		err = fmt.Errorf("state: cluster %s: intermediate key: %w", cluster, ErrNotFound)
	}
	return k, err
}

// PendingIntermediateKey unseals the key of a cluster's pending CSR.
func (t *Tx) PendingIntermediateKey(cluster string) ([]byte, error) {
	k, ok, err := t.Secret(SecretPendingIntermediateKey(cluster))
	if err == nil && !ok {
		err = fmt.Errorf("state: cluster %s: pending intermediate key: %w", cluster, ErrNotFound)
	}
	return k, err
}

// SetClusterStatus records the last observed status of a cluster.
func (t *Tx) SetClusterStatus(cluster string, status json.RawMessage, observedAt time.Time) error {
	return t.modifyCluster(cluster, func(r *ClusterRecord) error {
		r.Status, r.StatusObservedAt = status, observedAt.UTC()
		return nil
	})
}

// SetReaderToken records a token minted for cluster's reader and held by
// tok.ReadBy, replacing the previous one that cluster held. The same token
// recorded again (every apply does) keeps the time it was first recorded.
func (t *Tx) SetReaderToken(cluster string, tok ReaderToken) error {
	return t.modifyCluster(cluster, func(r *ClusterRecord) error {
		tok.IssuedAt, tok.ExpiresAt = tok.IssuedAt.UTC(), tok.ExpiresAt.UTC()
		for i := range r.ReaderTokens {
			if r.ReaderTokens[i].ReadBy == tok.ReadBy {
				if r.ReaderTokens[i].ExpiresAt.Equal(tok.ExpiresAt) {
					tok.IssuedAt = r.ReaderTokens[i].IssuedAt
				}
				r.ReaderTokens[i] = tok
				return nil
			}
		}
		r.ReaderTokens = append(r.ReaderTokens, tok)
		return nil
	})
}

// --- values ---

// PutValue stores v as JSON under key, for small records other parts of the
// hub keep (never secrets: use PutSecret).
func (t *Tx) PutValue(key string, v any) error { return t.putJSON(bucketValues, []byte(key), v) }

// Value decodes the JSON under key into v; ok is false when there is none.
func (t *Tx) Value(key string, v any) (ok bool, err error) {
	return t.getJSON(bucketValues, []byte(key), v)
}

// DeleteValue removes key.
func (t *Tx) DeleteValue(key string) error {
	if err := t.tx.Bucket(bucketValues).Delete([]byte(key)); err != nil {
		return fmt.Errorf("state: delete %s: %w", key, err)
	}
	return nil
}
