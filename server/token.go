package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// LoadToken returns the hub's bearer token for the server: the first line
// of file, else the TokenEnv variable of getenv. A file that does not exist
// yet is created (mode 0600) with a new random token, so that a first start
// needs no setup.
func LoadToken(file string, getenv func(string) string) (token string, created bool, err error) {
	if file != "" {
		if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return "", false, err
			}
			token = base64.RawURLEncoding.EncodeToString(b)
			if err := writeFileAtomic(file, []byte(token+"\n"), 0o600); err != nil {
				return "", false, fmt.Errorf("hub token %s: %w", file, err)
			}
			return token, true, nil
		}
	}
	token, err = ReadToken(file, getenv)
	return token, false, err
}

// ReadToken returns the hub's bearer token for a client: the first line of
// file, else the TokenEnv variable of getenv.
func ReadToken(file string, getenv func(string) string) (string, error) {
	if file == "" {
		if t := strings.TrimSpace(getenv(TokenEnv)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("no hub token: name a token file or set %s", TokenEnv)
	}
	if err := checkTokenFileMode(file); err != nil {
		return "", err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("hub token: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	token := strings.TrimSpace(line)
	if token == "" {
		return "", fmt.Errorf("hub token %s is empty", file)
	}
	return token, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, so that readers never see half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flotilla-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
