package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

func newHubCommand(g *globals) *cobra.Command {
	hub := &cobra.Command{Use: "hub", Short: "The running hub's replicas"}
	var output string
	members := &cobra.Command{
		Use:   "members [-o table|json]",
		Short: "Hub replicas, their health, and the clusters each reconciles (needs --hub)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url := g.hubURL()
			if url == "" {
				return fmt.Errorf("hub members asks a running hub: give --hub URL")
			}
			eng, done, err := g.hubClient(url)
			if err != nil {
				return err
			}
			defer done()
			c, ok := eng.(*server.Client)
			if !ok {
				return fmt.Errorf("--hub %s: not a hub client", url)
			}
			ms, err := c.Members(cmd.Context())
			if err != nil {
				return err
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(ms)
			case "table", "":
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "NAME\tSTATE\tGOSSIP\tAPI\tCLUSTERS\n")
				for _, m := range ms.Members {
					name := m.Name
					if m.IsSelf {
						name += " (answered)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, m.State, m.Addr, m.API, strings.Join(m.Clusters, ","))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				reach := "reachable"
				if !ms.StateReachable {
					reach = "NOT reachable: " + ms.StateError
				}
				fmt.Fprintf(cmd.OutOrStdout(), "state: %s, %s\n", ms.State, reach)
				return nil
			}
			return fmt.Errorf("-o %s: want table or json", output)
		},
	}
	members.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	hub.AddCommand(members)
	return hub
}
