package cli

import (
	"os"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/state"
)

// secretEnvNames are the environment variables that may carry secrets. They
// are read once and removed from the process environment: client-go's exec
// credential plugins, and anything else flotilla starts, inherit the whole
// environment.
var secretEnvNames = []string{state.KeyEnv, server.TokenEnv}

// secretEnv holds the secrets taken out of the environment.
type secretEnv map[string]string

// takeSecretEnv reads and unsets the secret variables. Called again (a
// second command in the same process), it keeps what the first call took.
func (s secretEnv) take() {
	for _, name := range secretEnvNames {
		if v, ok := os.LookupEnv(name); ok {
			s[name] = v
			os.Unsetenv(name)
		}
	}
}

// getenv is os.Getenv that also answers for the secrets taken out.
func (s secretEnv) getenv(name string) string {
	if v, ok := s[name]; ok {
		return v
	}
	return os.Getenv(name)
}
