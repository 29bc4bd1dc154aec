package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

func newApplyCommand(g *globals, plan bool) *cobra.Command {
	var file, render, output string
	var dryRun, adopt, replace bool
	use, short := "apply -f mesh.yaml", "Converge the clusters to the mesh spec"
	if plan {
		use, short = "plan -f mesh.yaml", "Show what apply would change, per cluster (a server-side dry run)"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f mesh.yaml is required")
			}
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			m, err := spec.LoadFile(file)
			if err != nil {
				return err
			}
			if render != "" {
				return renderMesh(cmd.OutOrStdout(), m, render)
			}
			if adopt && replace {
				return fmt.Errorf("--adopt-cacerts and --replace-cacerts exclude each other")
			}
			opts := server.ApplyOptions{DryRun: dryRun || plan, Source: "cli"}
			switch {
			case adopt:
				opts.CACertsPolicy = pki.Adopt
			case replace:
				opts.CACertsPolicy = pki.Replace
			}
			names := make([]string, 0, len(m.Spec.Clusters))
			for _, c := range m.Spec.Clusters {
				names = append(names, c.Name)
			}
			progress := progressWriter(cmd.ErrOrStderr(), names)
			if output == "json" {
				progress = io.Discard
			}
			eng, done, err := g.applyEngine(cmd.Context(), progress, opts.DryRun)
			if err != nil {
				return err
			}
			defer done()
			rep, err := eng.Apply(cmd.Context(), m, opts)
			if err != nil {
				return err
			}
			if err := printReport(cmd.OutOrStdout(), rep, output, plan); err != nil {
				return err
			}
			if err := rep.Err(); err != nil {
				return err
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&file, "file", "f", "", "mesh spec (YAML)")
	f.StringVarP(&output, "output", "o", "table", "output: table or json")
	if !plan {
		f.BoolVar(&dryRun, "dry-run", false, "server-side dry run: the API servers validate everything, nothing persists")
		f.StringVar(&render, "render", "", "write DIR/<cluster>.yaml instead of applying, contacting no cluster and no state: the control-plane namespace with its network labels, "+
			"the east-west gateway and the Istio resources. Left out: Secrets (cacerts, remote secrets: keys and tokens), the reader and config-cluster RBAC, "+
			"cert-manager and csr-agent objects. A gateway address not known without asking the cluster is written as "+deploy.PendingAddress+", with a WARNING line in the file's header")
		f.BoolVar(&adopt, "adopt-cacerts", false, "take over an existing cacerts that chains to the mesh root")
		f.BoolVar(&replace, "replace-cacerts", false, "overwrite an existing cacerts flotilla did not write")
	}
	return c
}

func printReport(w io.Writer, rep *server.ApplyReport, output string, plan bool) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if output != "table" && output != "" {
		return fmt.Errorf("unknown output %q (want table or json)", output)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tSTEP\tACTION\tDETAIL")
	for _, s := range rep.Steps {
		cl := s.Cluster
		if cl == "" {
			cl = "(mesh)"
		}
		detail := s.Detail
		if s.Error != "" {
			detail = s.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cl, s.Step, s.Action, detail)
	}
	tw.Flush()
	verb := "applied"
	if rep.DryRun || plan {
		verb = "planned (nothing changed)"
	}
	fmt.Fprintf(w, "\n%s: %d change(s), %d failure(s) in %s\n", verb, rep.Changes(), len(rep.Failed()), rep.Duration.Round(1e8))
	return nil
}

// renderMesh writes the control-plane objects of every cluster without
// contacting any: addresses not known yet are rendered as pending.
func renderMesh(w io.Writer, m *spec.Mesh, dir string) error {
	plans, err := server.PlanControlPlanes(m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files, err := gateways.Render(dir, plans)
	if err != nil {
		return err
	}
	sort.Strings(files)
	fmt.Fprintf(w, "rendered %s\n", strings.Join(files, ", "))
	return nil
}
