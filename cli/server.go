package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/dashboard"
	"github.com/flotillamesh/flotilla/server/ring"
)

// hubOpener opens the local state as a hub for the server; the returned
// func closes it.
type hubOpener func(ctx context.Context) (*server.Hub, func(), error)

// newServerCommand is `flotilla server`. open gives it the hub on the
// local state (the state flags belong to the root). v, when not nil, is the
// root's viper, which has bound this command's flags by the time it runs
// (FLOTILLA_LISTEN, FLOTILLA_INTERVAL, ... and the config file; flags win).
func newServerCommand(open hubOpener, v *viper.Viper, getenv func(string) string) *cobra.Command {
	if getenv == nil {
		getenv = os.Getenv
	}
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the hub: the HTTP API, the reconcile loop, metrics and health",
		Long: `Run flotilla as a long-running hub on the local state.

The API (JSON under /api/v1/) is served over TLS and needs the bearer token of
--token-file (created with a random token when it does not exist) or
$FLOTILLA_HUB_TOKEN. Without --tls-cert/--tls-key the hub makes its own serving
certificate for the listen address under a CA kept sealed in the state;
--tls-ca-out writes that CA for clients to pin:

  flotilla --hub https://HOST:8443 --hub-token-file TOKEN --hub-ca CA status

Every --interval the stored spec is applied again: deleted cacerts, remote
secrets and network labels come back, reader tokens and intermediates are
renewed before they expire. /healthz and /readyz need no token and answer
only ok or not ok (with the token, /readyz says why); /metrics needs the token
unless --metrics-public. The token file must be readable by its owner only
(mode 0600). Connections are cut after 30s of reading or writing, 2m idle
(an apply's answer may take as long as the apply).
SIGTERM or SIGINT stops it; an apply in progress gets --grace-period to finish.

The dashboard is at https://HOST:8443/: sign in with the same token, once; the
browser keeps a session cookie. While a browser watches, it refreshes every
--dashboard-refresh (each refresh reads every cluster, as status does).`,
		Args: cobra.NoArgs,
	}
	f := c.Flags()
	f.String("listen", server.DefaultListen, "address to serve on")
	f.Duration("interval", server.DefaultInterval, "reconcile interval (0: no reconcile loop)")
	f.Duration("grace-period", server.DefaultGracePeriod, "how long shutdown waits for an apply in progress")
	f.String("token-file", "", "file holding the API bearer token (created if missing; else $"+server.TokenEnv+")")
	f.String("tls-cert", "", "serving certificate (PEM); default: generated")
	f.String("tls-key", "", "serving key (PEM), with --tls-cert")
	f.String("tls-ca-out", "", "write the generated certificate's CA here, for clients to pin")
	f.StringSlice("tls-san", nil, "extra DNS names or IPs for the generated certificate")
	f.String("log-level", "info", "log level: debug, info, warn or error")
	f.StringSlice("allow-path", nil, "directory whose files a spec sent to the API may name (root certFile/keyFile, kubeconfig); repeatable; default none")
	f.Bool("allow-exec-plugins", false, "let kubeconfigs run exec or auth-provider credential plugins (as the hub's user)")
	f.Bool("metrics-public", false, "serve /metrics without the token (its series name every cluster)")
	f.Duration("dashboard-refresh", dashboard.DefaultRefresh, "how often the dashboard refreshes while a browser watches")
	f.String("gossip", "", "gossip address host:port: run as one replica of several sharing an etcd --state")
	f.String("gossip-advertise", "", "gossip address the other replicas reach this one at (default: --gossip)")
	f.StringSlice("join", nil, "gossip addresses of other replicas, host:port,...")
	f.String("gossip-key-file", "", "key that encrypts gossip (base64 of 32 bytes; make one with flotilla state keygen --out FILE)")
	f.String("name", "", "this replica's name in the ring (default: the host name)")

	c.RunE = func(cmd *cobra.Command, _ []string) error {
		get := flagGetter(cmd, v)
		var level slog.Level
		if err := level.UnmarshalText([]byte(get.str("log-level"))); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
		interval, err := get.duration("interval")
		if err != nil {
			return err
		}
		if interval == 0 {
			interval = -1 // ServerOptions: negative disables the loop
		}
		grace, err := get.duration("grace-period")
		if err != nil {
			return err
		}
		refresh, err := get.duration("dashboard-refresh")
		if err != nil {
			return err
		}
		log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
		token, created, err := server.LoadToken(get.str("token-file"), getenv)
		if err != nil {
			return err
		}
		if created {
			log.Info("created a new API token", "file", get.str("token-file"))
		}

		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()

		hub, closeState, err := open(ctx)
		if err != nil {
			return err
		}
		defer closeState()
		rg, err := joinRing(get, hub, get.str("listen"))
		if err != nil {
			return err
		}
		if rg != nil {
			defer rg.Leave(5 * time.Second)
			log.Info("joined the hub ring", "name", rg.Name(), "gossip", get.str("gossip"), "members", rg.Live())
		}
		// The hub acts for API callers with its own rights: what a spec
		// may make it read is bounded.
		hub.Inputs.Confined = true
		hub.Inputs.AllowPaths = get.strings("allow-path")
		hub.Inputs.AllowExecPlugins = get.boolean("allow-exec-plugins")
		hub.Inputs.Warnings = warnLog{log}
		srv, err := server.NewServer(ctx, hub, server.ServerOptions{
			Listen:        get.str("listen"),
			Token:         token,
			Interval:      interval,
			GracePeriod:   grace,
			TLSCertFile:   get.str("tls-cert"),
			TLSKeyFile:    get.str("tls-key"),
			CAOut:         get.str("tls-ca-out"),
			SANs:          get.strings("tls-san"),
			Logger:        log,
			MetricsPublic: get.boolean("metrics-public"),

			DashboardRefresh: refresh,
			Ring:             rg,
		})
		if err != nil {
			return err
		}
		return srv.Run(ctx)
	}
	return c
}

// warnLog turns the input policy's warnings into warning logs.
type warnLog struct{ log *slog.Logger }

func (w warnLog) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

// serverFlags reads a command's flags through viper when there is one.
type serverFlags struct {
	cmd *cobra.Command
	v   *viper.Viper
}

func flagGetter(cmd *cobra.Command, v *viper.Viper) serverFlags { return serverFlags{cmd, v} }

func (g serverFlags) str(name string) string {
	if g.v != nil && g.v.IsSet(name) {
		return g.v.GetString(name)
	}
	s, _ := g.cmd.Flags().GetString(name)
	return s
}

func (g serverFlags) boolean(name string) bool {
	if g.v != nil && g.v.IsSet(name) {
		return g.v.GetBool(name)
	}
	b, _ := g.cmd.Flags().GetBool(name)
	return b
}

func (g serverFlags) strings(name string) []string {
	if g.v != nil && g.v.IsSet(name) {
		return g.v.GetStringSlice(name)
	}
	s, _ := g.cmd.Flags().GetStringSlice(name)
	return s
}

func (g serverFlags) duration(name string) (time.Duration, error) {
	if g.v != nil && g.v.IsSet(name) {
		d, err := time.ParseDuration(g.v.GetString(name))
		if err != nil {
			return 0, fmt.Errorf("--%s: %w", name, err)
		}
		return d, nil
	}
	return g.cmd.Flags().GetDuration(name)
}

// joinRing joins the replicas' gossip ring when --gossip is given. Replicas
// share their state, so the state must be etcd: bbolt files are per machine.
func joinRing(get serverFlags, hub *server.Hub, listen string) (*ring.Ring, error) {
	addr := get.str("gossip")
	if addr == "" {
		return nil, nil
	}
	if hub.Store.Backend() != "etcd" {
		return nil, fmt.Errorf("--gossip: replicas share one state, and %s is a bbolt file: give --state etcd://...", hub.Store.Path())
	}
	if get.str("gossip-key-file") == "" {
		return nil, fmt.Errorf("--gossip needs --gossip-key-file: gossip is always encrypted")
	}
	key, err := ring.ReadKeyFile(get.str("gossip-key-file"))
	if err != nil {
		return nil, err
	}
	name := get.str("name")
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("--name: %w", err)
		}
	}
	return ring.Join(ring.Config{Name: name, Bind: addr, Advertise: get.str("gossip-advertise"), Join: get.strings("join"), Key: key, API: "https://" + listen, RetryJoin: true})
}
