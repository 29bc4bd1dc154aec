// Package cli is the flotilla command: one binary that works embedded (on
// the local state file) or against a running hub (--hub).
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// globals are the flags every command shares, resolved through viper: a
// config file, then FLOTILLA_* environment variables, then flags (which win).
type globals struct {
	v       *viper.Viper
	secrets secretEnv
}

func (g *globals) statePath() string    { return g.v.GetString("state") }
func (g *globals) stateKeyFile() string { return g.v.GetString("state-key-file") }
func (g *globals) kubeconfig() string   { return g.v.GetString("kubeconfig") }
func (g *globals) hubURL() string       { return g.v.GetString("hub") }

func defaultStatePath() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "flotilla", "state.db")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "flotilla", "state.db")
	}
	return "flotilla-state.db"
}

// NewRoot builds the flotilla command tree.
func NewRoot(bi BuildInfo) *cobra.Command {
	g := &globals{v: viper.New(), secrets: secretEnv{}}
	var configFile string
	root := &cobra.Command{
		Use:   "flotilla",
		Short: "Federate Istio service meshes across Kubernetes clusters",
		Long: `flotilla bootstraps clusters into one Istio mesh: a shared root of trust,
remote secrets, east-west gateways and control-plane resources per topology.

Configuration: flags win over FLOTILLA_* environment variables (FLOTILLA_STATE,
FLOTILLA_HUB, FLOTILLA_KUBECONFIG, FLOTILLA_STATE_KEY_FILE, ...), which win over
the config file (--config, default ~/.config/flotilla/config.yaml).
The state key itself can be given as FLOTILLA_STATE_KEY.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.load(cmd, configFile)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&configFile, "config", "", "config file (default ~/.config/flotilla/config.yaml when it exists)")
	pf.String("state", defaultStatePath(), "state: a bbolt file, or etcd://host:2379,...?prefix=P[&cacert=F&cert=F&key=F] shared by hub replicas")
	pf.String("state-key-file", "", "file holding the key that seals secrets in the state (else $FLOTILLA_STATE_KEY)")
	pf.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG or ~/.kube/config)")
	pf.String("hub", "", "URL of a running hub (flotilla server); default: work on the local state")
	pf.String("hub-token-file", "", "file holding the hub's bearer token (else $FLOTILLA_HUB_TOKEN)")
	pf.String("hub-ca", "", "CA file the hub's serving certificate chains to")
	pf.Bool("insecure-skip-tls-verify", false, "accept kubeconfigs that skip TLS verification, for this run only (CA keys and tokens then travel unverified)")

	root.AddCommand(
		newVersionCommand(bi),
		newApplyCommand(g, false),
		newApplyCommand(g, true),
		newStatusCommand(g),
		newCheckCommand(g),
		newCACommand(g),
		newFederationCommand(g),
		newStateCommand(g),
	)
	for _, extra := range extraCommands(g) {
		root.AddCommand(extra)
	}
	return root
}

func (g *globals) load(cmd *cobra.Command, configFile string) error {
	g.secrets.take()
	v := g.v
	v.SetEnvPrefix("FLOTILLA")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	if configFile != "" {
		v.SetConfigFile(configFile)
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("config file %s: %w", configFile, err)
		}
	} else if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".config", "flotilla", "config.yaml")
		if _, err := os.Stat(p); err == nil {
			v.SetConfigFile(p)
			if err := v.ReadInConfig(); err != nil {
				return fmt.Errorf("config file %s: %w", p, err)
			}
		}
	}
	return v.BindPFlags(cmd.Flags())
}

func newVersionCommand(bi BuildInfo) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print flotilla's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printVersion(cmd.OutOrStdout(), bi, output)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return c
}

// openHub opens the local state as a hub. needKey: the command reads or
// writes sealed secrets (apply, ca export...); status and check do not.
func (g *globals) openHub(ctx context.Context, progress io.Writer, needKey bool) (*server.Hub, func(), error) {
	return g.openHubMode(ctx, progress, needKey, false)
}

// readHub opens the local state read-only, for commands that only read it
// (status, check, ca show): they share the state with a running hub or an
// apply in progress instead of failing on the writer's lock.
func (g *globals) readHub(ctx context.Context, progress io.Writer) (*server.Hub, func(), error) {
	return g.openHubMode(ctx, progress, false, true)
}

// readEngine is engine for the reading commands: the hub at --hub, or the
// local state read-only.
func (g *globals) readEngine(ctx context.Context, progress io.Writer) (server.Engine, func(), error) {
	if url := g.hubURL(); url != "" {
		return g.hubClient(url)
	}
	return g.readHub(ctx, progress)
}

func (g *globals) openHubMode(ctx context.Context, progress io.Writer, needKey, readOnly bool) (*server.Hub, func(), error) {
	if !needKey {
		// Reading commands never create a state.
		if err := stateExists(ctx, g.statePath()); err != nil {
			return nil, nil, fmt.Errorf("no state at %s: run flotilla apply -f mesh.yaml first, or name the state with --state", g.statePath())
		}
	}
	key, source, err := state.ResolveKey(g.stateKeyFile(), g.secrets.getenv)
	if err != nil {
		return nil, nil, err
	}
	if key == nil && needKey {
		return nil, nil, fmt.Errorf("no state key: set %s or --state-key-file (make one with: flotilla state keygen --out FILE)", state.KeyEnv)
	}
	_ = source // where the key came from matters only for messages state already words
	open := state.Open
	if readOnly {
		open = state.OpenReadOnly
	}
	st, err := open(ctx, g.statePath(), state.Options{Key: key, KeyOptional: !needKey})
	if err != nil {
		return nil, nil, err
	}
	h := &server.Hub{Store: st, Kubeconfig: g.kubeconfig(), Progress: progress,
		Inputs: server.InputPolicy{InsecureSkipTLSVerify: g.v.GetBool("insecure-skip-tls-verify")},
		Hook:   crashHook()}
	return h, func() { st.Close() }, nil
}

// engine returns what commands drive: the hub at --hub, or the local state.
func (g *globals) engine(ctx context.Context, progress io.Writer, needKey bool) (server.Engine, func(), error) {
	if url := g.hubURL(); url != "" {
		return g.hubClient(url)
	}
	return g.openHub(ctx, progress, needKey)
}

// readMesh loads -f (nil: the last applied spec) and opens the reading
// engine that takes it (readEngine).
func (g *globals) readMesh(ctx context.Context, file string, progress io.Writer) (*spec.Mesh, server.Engine, func(), error) {
	m, err := loadSpec(file)
	if err != nil {
		return nil, nil, nil, err
	}
	eng, done, err := g.readEngine(ctx, progress)
	return m, eng, done, err
}

// meshHub loads -f (nil: the last applied spec) and opens the local state
// with its key, for the offline-root commands.
func (g *globals) meshHub(ctx context.Context, file string) (*spec.Mesh, *server.Hub, func(), error) {
	m, err := loadSpec(file)
	if err != nil {
		return nil, nil, nil, err
	}
	h, done, err := g.openHub(ctx, io.Discard, true)
	return m, h, done, err
}

// loadSpec reads -f; "" means the stored spec (nil).
func loadSpec(path string) (*spec.Mesh, error) {
	if path == "" {
		return nil, nil
	}
	return spec.LoadFile(path)
}

// stateExists: the file is there, or etcd holds a state under the prefix.
func stateExists(ctx context.Context, path string) error {
	if !state.IsEtcd(path) {
		_, err := os.Stat(path)
		return err
	}
	st, err := state.OpenReadOnly(ctx, path, state.Options{KeyOptional: true})
	if err != nil {
		return err
	}
	return st.Close()
}
