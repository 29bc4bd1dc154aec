package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server/state"
)

func newStateCommand(g *globals) *cobra.Command {
	st := &cobra.Command{Use: "state", Short: "The hub's state file and its key"}
	var out string
	keygen := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Make a new state key in FILE (mode 0600; never overwritten)",
		Long: `keygen makes the key that seals private keys and tokens in the state.
Keep it apart from the state file: whoever has both has the mesh's root key.
Give it to flotilla with --state-key-file FILE, or its content as FLOTILLA_STATE_KEY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := state.GenerateKey()
			if err != nil {
				return err
			}
			if out == "" {
				return fmt.Errorf("--out FILE is required (the key is never printed)")
			}
			if err := state.WriteKeyFile(out, k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote a new state key to %s\n", out)
			return nil
		},
	}
	keygen.Flags().StringVar(&out, "out", "", "key file to create")
	st.AddCommand(keygen, newStateMigrateCommand(g))
	return st
}

func newStateMigrateCommand(g *globals) *cobra.Command {
	var from, to string
	c := &cobra.Command{
		Use:   "migrate --to STATE [--from STATE]",
		Short: "Copy a state into an empty one (bbolt file to etcd, or back) and verify the copy",
		Long: `migrate copies every record of one state into another that is empty: a bbolt
file into etcd (etcd://host:2379,...?prefix=P) or etcd into a new file. Sealed
secrets are copied byte for byte and open under the same state key. The copy
is verified: both states must hash the same and, given the key, every secret
in the new one must unseal. --from defaults to --state. Stop the hubs using
a bbolt source first (its writer lock refuses otherwise); an etcd source is
copied under its apply lock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				from = g.statePath()
			}
			if to == "" {
				return fmt.Errorf("--to STATE is required (a file, or etcd://host:2379,...?prefix=P)")
			}
			if from == to {
				return fmt.Errorf("--from and --to are both %s", from)
			}
			key, _, err := state.ResolveKey(g.stateKeyFile(), os.Getenv)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			opts := state.Options{Key: key, KeyOptional: key == nil}
			src, err := state.Open(ctx, from, opts)
			if err != nil {
				return err
			}
			defer src.Close()
			unlock, err := src.Lock(ctx, "apply")
			if err != nil {
				return fmt.Errorf("state %s: apply lock: %w", src.Path(), err)
			}
			defer unlock()
			dst, err := state.Open(ctx, to, opts)
			if err != nil {
				return err
			}
			defer dst.Close()
			rep, err := state.Copy(ctx, dst, src)
			if err != nil {
				return err
			}
			unsealed := fmt.Sprintf("%d secrets unsealed", rep.Secrets)
			if key == nil {
				unsealed = "secrets not unsealed (no state key given)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "copied %d records from %s to %s; verified: digest %s, %s\n", rep.Records, src.Path(), dst.Path(), rep.Digest[:16], unsealed)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "state to copy (default: --state)")
	c.Flags().StringVar(&to, "to", "", "empty state to copy into")
	return c
}
