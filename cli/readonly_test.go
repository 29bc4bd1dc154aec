package cli_test

import (
	"context"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/server/state"
)

// TestReadersShareTheState: while another process holds the state for
// writing (a running hub, an apply), status, check and ca show read it
// instead of failing on the writer's lock; a writing command still refuses.
func TestReadersShareTheState(t *testing.T) {
	c := newCorpus(t)
	k, err := state.ReadKeyFile(c.key)
	if err != nil {
		t.Fatal(err)
	}
	holder, err := state.Open(context.Background(), c.state, state.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	base := []string{"--state", c.state, "--state-key-file", c.key}
	for _, tc := range []struct {
		name  string
		args  []string
		inUse bool // the command must fail on the lock
	}{
		{"ca show", []string{"ca", "show"}, false},
		{"ca show json", []string{"ca", "show", "-o", "json"}, false},
		{"status", []string{"status", "-o", "json"}, false},
		{"check", []string{"check"}, false},
		{"ca rotate writes", []string{"ca", "rotate", "intermediate", "east"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runFlotilla(context.Background(), append(base, tc.args...))
			locked := err != nil && strings.Contains(err.Error(), "in use by")
			if locked != tc.inUse {
				t.Fatalf("flotilla %s: %v (want in use: %v)", strings.Join(tc.args, " "), err, tc.inUse)
			}
		})
	}
}
