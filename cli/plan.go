package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/state"
)

// applyEngine is the engine apply and plan drive. A dry run (plan, apply
// --dry-run) before the first apply has no state to read: it runs on an
// empty state of its own, made for the run and removed after it, so that it
// shows the root to generate and everything to create. The user's state path
// stays untouched: no file is created there.
func (g *globals) applyEngine(ctx context.Context, progress io.Writer, dryRun bool) (server.Engine, func(), error) {
	if g.hubURL() != "" || !dryRun {
		return g.engine(ctx, progress, !dryRun)
	}
	if _, err := os.Stat(g.statePath()); !errors.Is(err, fs.ErrNotExist) {
		return g.engine(ctx, progress, false)
	}
	dir, err := os.MkdirTemp("", "flotilla-plan-")
	if err != nil {
		return nil, nil, fmt.Errorf("plan on an empty state: %w", err)
	}
	// A throwaway key: nothing sealed in this state outlives the run.
	key, err := state.GenerateKey()
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	st, err := state.Open(ctx, filepath.Join(dir, "state.db"), state.Options{Key: key})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("plan on an empty state: %w", err)
	}
	h := &server.Hub{Store: st, Kubeconfig: g.kubeconfig(), Progress: progress,
		Inputs: server.InputPolicy{InsecureSkipTLSVerify: g.v.GetBool("insecure-skip-tls-verify")}}
	return h, func() { st.Close(); os.RemoveAll(dir) }, nil
}
