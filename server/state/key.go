package state

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// KeyEnv is the environment variable that may hold the state key (base64).
const KeyEnv = "FLOTILLA_STATE_KEY"

// KeySize is the length of a state key: AES-256.
const KeySize = 32

// Key is the key that seals the state's secrets. It never enters the state
// file; it prints as a placeholder so that it cannot leak through logs.
type Key struct{ b [KeySize]byte }

// String redacts the key.
func (k *Key) String() string { return "state-key(redacted)" }

// GoString redacts the key from %#v.
func (k *Key) GoString() string { return k.String() }

// Encode returns the key as base64 text, the form key files and KeyEnv hold.
func (k *Key) Encode() string { return base64.StdEncoding.EncodeToString(k.b[:]) }

// GenerateKey returns a new random key.
func GenerateKey() (*Key, error) {
	k := &Key{}
	if _, err := rand.Read(k.b[:]); err != nil {
		return nil, fmt.Errorf("generate state key: %w", err)
	}
	return k, nil
}

// ParseKey decodes a base64 key (standard or URL alphabet, padding optional).
func ParseKey(text string) (*Key, error) {
	text = strings.TrimSpace(text)
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err = enc.DecodeString(text); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("state key is not base64")
	}
	if len(raw) != KeySize {
		return nil, fmt.Errorf("state key is %d bytes, want %d (base64 of 32 random bytes)", len(raw), KeySize)
	}
	k := &Key{}
	copy(k.b[:], raw)
	return k, nil
}

// ReadKeyFile reads a key file. A key file others can read is refused, as
// ssh refuses such private keys: the key is worth as much as the root key.
func ReadKeyFile(path string) (*Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("state key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("state key file %s has mode %04o; others must not read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("state key file: %w", err)
	}
	k, err := ParseKey(string(data))
	if err != nil {
		return nil, fmt.Errorf("state key file %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile writes k to a new file with mode 0600. It never overwrites:
// replacing a key file would lock the state it sealed away for good.
func WriteKeyFile(path string, k *Key) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("state key file %s already exists; not overwriting it", path)
		}
		return fmt.Errorf("state key file: %w", err)
	}
	if _, err := f.WriteString(k.Encode() + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("state key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("state key file %s: %w", path, err)
	}
	return f.Close()
}

// ResolveKey finds the state key: the key file when one is named (an explicit
// choice wins), else KeyEnv read through getenv (os.Getenv in production).
// It returns a nil key and no error when neither is given; source says where
// the key came from, for messages.
func ResolveKey(keyFile string, getenv func(string) string) (key *Key, source string, err error) {
	if keyFile != "" {
		k, err := ReadKeyFile(keyFile)
		return k, keyFile, err
	}
	if v := getenv(KeyEnv); v != "" {
		k, err := ParseKey(v)
		if err != nil {
			return nil, KeyEnv, fmt.Errorf("%s: %w", KeyEnv, err)
		}
		return k, KeyEnv, nil
	}
	return nil, "", nil
}

// Sealing format: version byte, 12-byte random nonce, AES-256-GCM ciphertext
// and tag. The additional data binds a sealed value to its bucket and key, so
// a value copied to another place in the state does not open.
const sealVersion = 1

func aad(bucket, key string) []byte {
	return []byte("flotilla-state-v1\x00" + bucket + "\x00" + key)
}

type sealer struct{ aead cipher.AEAD }

func newSealer(k *Key) (*sealer, error) {
	block, err := aes.NewCipher(k.b[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(bucket, key string, plain []byte) ([]byte, error) {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:], plain, aad(bucket, key)), nil
}

var errOpen = errors.New("cannot be unsealed")

func (s *sealer) open(bucket, key string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, errOpen
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], aad(bucket, key))
	if err != nil {
		return nil, errOpen
	}
	return plain, nil
}
