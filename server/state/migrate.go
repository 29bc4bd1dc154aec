package state

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// copyChunk bounds the records written per transaction while copying: etcd
// refuses a transaction of more than 128 operations by default.
const copyChunk = 100

// CopyReport says what Copy copied.
type CopyReport struct {
	Records int
	Secrets int
	// Digest is the SHA-256 of every bucket, key, value and sequence, equal
	// in source and destination.
	Digest string
}

type rawRecord struct {
	bucket []byte
	key    []byte
	value  []byte
}

// Copy copies the whole state src into dst (bbolt to etcd or back), sealed
// secrets byte for byte (a sealed value is bound to its bucket and name, not
// to the backend, so it opens under the same key), then verifies: both sides
// must hash the same, and with a key every secret in dst must unseal. dst
// must be empty: Copy never merges two states. A copy interrupted part way
// leaves a dst that is not empty, and that the verification refuses: copy
// again into a fresh prefix or file.
func Copy(ctx context.Context, dst, src *Store) (CopyReport, error) {
	var recs []rawRecord
	seqs := map[string]uint64{}
	err := src.be.view(ctx, func(t txn) error {
		for _, b := range allBuckets {
			bk := t.Bucket(b)
			seqs[string(b)] = bk.Sequence()
			err := bk.ForEach(func(k, v []byte) error {
				recs = append(recs, rawRecord{bucket: b, key: clone(k), value: clone(v)})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return CopyReport{}, fmt.Errorf("migrate: read %s: %w", src.path, err)
	}
	err = dst.be.view(ctx, func(t txn) error {
		for _, b := range allBuckets {
			n := 0
			t.Bucket(b).ForEach(func(k, _ []byte) error {
				if string(b) != string(bucketMeta) || string(k) != string(keySchema) {
					n++
				}
				return nil
			})
			if n > 0 {
				return fmt.Errorf("migrate: %s already holds a state (bucket %s is not empty); copy into a fresh prefix or file", dst.path, b)
			}
		}
		return nil
	})
	if err != nil {
		return CopyReport{}, err
	}
	rep := CopyReport{Records: len(recs)}
	for start := 0; start < len(recs); start += copyChunk {
		chunk := recs[start:min(start+copyChunk, len(recs))]
		err := dst.be.update(ctx, func(t txn) error {
			for _, r := range chunk {
				if err := t.Bucket(r.bucket).Put(r.key, r.value); err != nil {
					return fmt.Errorf("%s/%x: %w", r.bucket, r.key, err)
				}
			}
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("migrate: write %s: %w", dst.path, err)
		}
	}
	err = dst.be.update(ctx, func(t txn) error {
		for b, v := range seqs {
			if err := t.Bucket([]byte(b)).SetSequence(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("migrate: write %s: sequences: %w", dst.path, err)
	}
	srcSum, _, err := digest(ctx, src)
	if err != nil {
		return rep, fmt.Errorf("migrate: verify %s: %w", src.path, err)
	}
	dstSum, secrets, err := digest(ctx, dst)
	if err != nil {
		return rep, fmt.Errorf("migrate: verify %s: %w", dst.path, err)
	}
	if srcSum != dstSum {
		return rep, fmt.Errorf("migrate: %s does not match %s after the copy (digest %s, want %s)", dst.path, src.path, dstSum, srcSum)
	}
	rep.Digest, rep.Secrets = dstSum, secrets
	return rep, nil
}

// digest hashes every record and sequence of s and, when s has its key,
// unseals every secret (their count comes back).
func digest(ctx context.Context, s *Store) (string, int, error) {
	h := sha256.New()
	secrets := 0
	err := s.View(ctx, func(tx *Tx) error {
		for _, b := range allBuckets {
			bk := tx.tx.Bucket(b)
			h.Write(binary.BigEndian.AppendUint64(append(clone(b), 0), bk.Sequence()))
			err := bk.ForEach(func(k, v []byte) error {
				for _, part := range [][]byte{k, v} {
					h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(part))))
					h.Write(part)
				}
				if string(b) == string(bucketSecrets) && s.sealer != nil {
					if _, _, err := tx.Secret(string(k)); err != nil {
						return err
					}
					secrets++
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && errors.Is(err, ErrTampered) {
		return "", 0, fmt.Errorf("a sealed secret does not open: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), secrets, err
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
