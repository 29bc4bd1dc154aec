package cli

import (
	"fmt"

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
	st.AddCommand(keygen)
	return st
}
