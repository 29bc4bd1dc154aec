package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

func newFederationCommand(g *globals) *cobra.Command {
	fed := &cobra.Command{Use: "federation", Short: "Reader credentials and the remote secrets that hold them"}
	var o server.ReaderRotationOptions
	var output string
	rotate := &cobra.Command{
		Use:   "rotate [--cluster NAME]",
		Short: "Replace reader tokens now (a suspected leak): new tokens into every remote secret, then the old ones revoked",
		Long: `rotate replaces the reader credential of every cluster that others read
(--cluster: of that one only), without a dropped request:
  1. a new token is minted, bound to a new Secret beside the reader account;
  2. every remote secret that reads the cluster is rewritten with it;
  3. once every reading istiod reports the cluster synced (istiod replaces a
     remote cluster only after the one built from the new secret has synced),
     the old token's binding Secret is deleted, which revokes that token alone;
  4. TokenReview is asked until it refuses the old token.
A cluster whose remote secrets could not all be written keeps its old token
valid, and the command fails naming it. The reconcile loop renews tokens the
same way when they come due (spec.federation.tokenTTL; renewed at half life).

-o json: readers[] {cluster, account, heldBy[], binding, expiresAt, renewAt,
revoked[], istiodSyncedMillis, oldTokenRefused, refusedMillis, error}, apply
(the journal entry and its steps).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			eng, done, err := g.engine(cmd.Context(), cmd.ErrOrStderr(), true)
			if err != nil {
				return err
			}
			defer done()
			r, err := eng.RotateReaders(cmd.Context(), nil, o)
			if r == nil {
				return err
			}
			if perr := printRotation(cmd.OutOrStdout(), r, output); perr != nil {
				return perr
			}
			return err
		},
	}
	f := rotate.Flags()
	f.StringVar(&o.Cluster, "cluster", "", "rotate only the credential that reads this cluster")
	f.DurationVar(&o.Settle, "settle", server.DefaultRotationSettle, "how long the new remote secrets stand before istiod's view is read")
	f.StringVarP(&output, "output", "o", "table", "output: table or json")
	fed.AddCommand(rotate)
	return fed
}

func printRotation(w io.Writer, r *server.ReaderRotation, output string) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "READER OF\tHELD BY\tNEW TOKEN EXPIRES\tRENEWS\tREVOKED\tISTIOD SYNCED\tOLD TOKEN\tERROR")
	for _, rr := range r.Readers {
		old := "still accepted"
		if rr.OldTokenRefused {
			old = fmt.Sprintf("refused after %s", time.Duration(rr.RefusedMillis)*time.Millisecond)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", rr.Cluster, orDash(strings.Join(rr.HeldBy, ",")), when(rr.ExpiresAt), when(rr.RenewAt),
			len(rr.Revoked), time.Duration(rr.IstiodSyncedMillis)*time.Millisecond, old, orDash(rr.Error))
	}
	return tw.Flush()
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
