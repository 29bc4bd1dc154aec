package cli

import (
	"os"
	"testing"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestSecretEnvTaken: the state key and hub token leave the environment
// once read (exec credential plugins inherit it) and stay readable to
// flotilla itself.
func TestSecretEnvTaken(t *testing.T) {
	t.Setenv(state.KeyEnv, "key-material")
	t.Setenv(server.TokenEnv, "hub-token-0123456789")
	t.Setenv("FLOTILLA_STATE", "/tmp/state.db")
	s := secretEnv{}
	s.take()
	for _, name := range []string{state.KeyEnv, server.TokenEnv} {
		if _, ok := os.LookupEnv(name); ok {
			t.Errorf("%s is still in the environment", name)
		}
	}
	if os.Getenv("FLOTILLA_STATE") != "/tmp/state.db" {
		t.Error("a variable that is no secret was taken")
	}
	s.take() // a second command in the same process
	if s.getenv(state.KeyEnv) != "key-material" || s.getenv(server.TokenEnv) != "hub-token-0123456789" {
		t.Errorf("taken secrets: %q %q", s.getenv(state.KeyEnv), s.getenv(server.TokenEnv))
	}
}
