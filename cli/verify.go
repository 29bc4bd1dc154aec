package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

// newVerifyCommand is `flotilla verify`: cross-cluster helloworld traffic.
func newVerifyCommand(g *globals) *cobra.Command {
	var o server.VerifyOptions
	var file, output string
	c := &cobra.Command{
		Use:   "verify [--requests N] [--keep] [-f mesh.yaml]",
		Short: "Prove cross-cluster traffic: helloworld v1, v2, ... answer every cluster's curl client",
		Long: `verify deploys Istio's helloworld check in namespace sample of every cluster
that runs workloads (primaries, remotes, data-plane clusters): the helloworld
Service (port 5000) everywhere, helloworld-v1 on the first cluster,
helloworld-v2 on the second and so on, and a curl client in each. The
namespace gets sidecar injection: istio-injection=enabled, or istio.io/rev
when the cluster's control plane is a revision. In an ambient cluster it is
labelled istio.io/dataplane-mode=ambient instead, and the helloworld Service
istio.io/global=true (only global services answer across clusters); with
--local-service it is left local, a negative control under which each
client reaches only its own cluster's version.

It waits for the rollouts, that is for every sample pod to be Ready (with a
sidecar, Ready includes the proxy's readiness: it has its config), runs N
requests from each client (exec through the API server: curl -s
helloworld.sample:5000/hello), and prints per client how many answers came
from each version. It passes only when every request got an answer and
every version answered every client; otherwise it fails with the failure
counts, the first errors and a diagnosis: the failing checks of flotilla
check, and pods that have no sidecar. The sample apps are removed afterwards
unless --keep is given.

-o json is stable: versions[], clients[] {cluster, pod, requests, answers
{version: count}, failures, errors[], lastFailure, missing[]}, ok,
diagnosis[] (as flotilla check -o json), requestMillis.

With --hub the hub runs the check with its own connections to the clusters,
on the spec it last applied unless -f gives one: the client needs neither
kubeconfigs nor a spec file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			if o.Requests < 1 {
				return fmt.Errorf("--requests %d: want 1 to %d", o.Requests, server.MaxVerifyRequests)
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return runVerify(cmd.Context(), g, file, output, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := c.Flags()
	f.StringVarP(&file, "file", "f", "", "mesh spec (default: the last one applied)")
	f.IntVar(&o.Requests, "requests", server.DefaultVerifyRequests, "requests per client")
	f.BoolVar(&o.Keep, "keep", false, "leave the sample apps in place")
	f.StringVarP(&output, "output", "o", "table", "output: table or json")
	f.DurationVar(&o.Timeout, "timeout", server.DefaultVerifyTimeout, "how long to wait for the sample pods to be Ready")
	f.BoolVar(&o.LocalService, "local-service", false, "ambient: leave the sample Service without istio.io/global (each client should reach only its own cluster)")
	return c
}

func runVerify(ctx context.Context, g *globals, file, output string, o server.VerifyOptions, stdout, progress io.Writer) error {
	m, eng, done, err := g.readMesh(ctx, file, progress)
	if err != nil {
		return err
	}
	defer done()
	res, err := eng.Verify(ctx, m, o)
	if err != nil {
		return err
	}
	if err := printVerify(stdout, res, output); err != nil {
		return err
	}
	return res.Err()
}

func printVerify(w io.Writer, r *server.VerifyResult, output string) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "CLIENT\tPOD"
	for _, v := range r.Versions {
		header += "\t" + strings.ToUpper(v)
	}
	fmt.Fprintln(tw, header+"\tFAILED\tRESULT")
	for _, c := range r.Clients {
		row := c.Cluster + "\t" + orDash(c.Pod)
		for _, v := range r.Versions {
			row += fmt.Sprintf("\t%d", c.Answers[v])
		}
		var bad []string
		if len(c.Missing) > 0 {
			bad = append(bad, "missing "+strings.Join(c.Missing, ","))
		}
		if c.Failures > 0 {
			bad = append(bad, "requests failed")
		}
		result := "ok"
		if len(bad) > 0 {
			result = strings.Join(bad, ", ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", row, c.Failures, result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range r.Clients {
		if c.Failures == 0 {
			continue
		}
		fmt.Fprintf(w, "%s: %d of %d requests failed\n", c.Cluster, c.Failures, c.Requests)
		for _, e := range c.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
		if c.LastFailure != "" && !slices.Contains(c.Errors, c.LastFailure) {
			fmt.Fprintf(w, "  last: %s\n", c.LastFailure)
		}
	}
	fmt.Fprintf(w, "%.0f ms per request\n", r.RequestMillis)
	if len(r.Diagnosis) > 0 {
		fmt.Fprintln(w, "\ndiagnosis:")
		for _, d := range r.Diagnosis {
			where := ""
			if d.Cluster != "" {
				where = " [" + d.Cluster + "]"
			}
			fmt.Fprintf(w, "  ✗ %s%s: %s\n", d.Name, where, d.Message)
			if d.Hint != "" {
				fmt.Fprintf(w, "      fix: %s\n", d.Hint)
			}
		}
	}
	return nil
}
