package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/state"
)

func newHistoryCommand(g *globals) *cobra.Command {
	var kind, output string
	var limit int
	c := &cobra.Command{
		Use:   "history [--kind apply|reconcile|all] [-n N]",
		Short: "List past applies from the journal, newest first",
		Long: `history lists the journal: the applies people ran (from the CLI or through
the hub's API) and, apart from them, the runs of the hub's reconcile loop.
Each kind has its own retention, so a loop that runs every minute never
pushes a person's apply out. Default: applies only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			k, err := server.ParseJournalKind(kind)
			if err != nil {
				return fmt.Errorf("--kind: %w", err)
			}
			hist, done, err := g.historian(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			recs, err := hist.History(cmd.Context(), limit, k)
			if err != nil {
				return err
			}
			return printHistory(cmd.OutOrStdout(), recs, output)
		},
	}
	c.Flags().StringVar(&kind, "kind", state.KindApply, "apply (people's applies), reconcile (the hub's loop) or all")
	c.Flags().IntVarP(&limit, "limit", "n", 20, "how many entries (0: all)")
	c.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return c
}

// historian is the journal's reader: the hub at --hub, or the local state
// read-only.
func (g *globals) historian(ctx context.Context) (server.Historian, func(), error) {
	if url := g.hubURL(); url != "" {
		eng, done, err := g.hubClient(url)
		if err != nil {
			return nil, nil, err
		}
		return eng.(*server.Client), done, nil
	}
	return g.readHub(ctx, io.Discard)
}

func printHistory(w io.Writer, recs []state.ApplyRecord, output string) error {
	if output == "json" {
		if recs == nil {
			recs = []state.ApplyRecord{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(recs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTART\tKIND\tSOURCE\tRESULT\tDURATION\tSTEPS\tFAILED\tCLUSTERS")
	for _, r := range recs {
		kind, source := r.Kind, r.Source
		if kind == "" {
			kind = state.KindApply
		}
		if source == "" {
			source = "-"
		}
		result, dur := r.Result, "-"
		switch {
		case r.End.IsZero() && result == "":
			result = "unfinished"
		case !r.End.IsZero():
			dur = r.End.Sub(r.Start).Round(time.Millisecond).String()
		}
		failed := 0
		for _, s := range r.Steps {
			if s.Error != "" || s.Result == "failed" {
				failed++
			}
		}
		// A replica's pass covers its share of the ring; other entries the mesh.
		clusters := "all"
		if len(r.Clusters) > 0 {
			clusters = strings.Join(r.Clusters, ",")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.ID, r.Start.UTC().Format(time.RFC3339), kind, source, result, dur, len(r.Steps), failed, clusters)
	}
	return tw.Flush()
}
