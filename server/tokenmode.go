package server

import (
	"fmt"
	"os"
)

// checkTokenFileMode refuses a token file that others can read or write, as
// ssh refuses such keys: the token rewrites every cluster's CA.
func checkTokenFileMode(file string) error {
	fi, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("hub token: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("hub token %s is not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("hub token file %s has mode %04o; only its owner may read it (fix: chmod 600 %s)", file, perm, file)
	}
	return nil
}
