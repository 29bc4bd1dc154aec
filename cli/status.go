package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/server"
)

func newStatusCommand(g *globals) *cobra.Command {
	var file, output string
	c := &cobra.Command{
		Use:   "status [-f mesh.yaml]",
		Short: "Clusters, trust, links, gateways and drift, as observed in the clusters",
		Long: `status reads every cluster of the mesh (the spec given with -f, else the
last one applied) and compares it with the spec and the state.

-o json is stable: fields are only ever added. Top level: mesh, topology,
rootFingerprint, observedAt, clusters[]. Per cluster: name, role, network,
reachable, error, networkLabel, gatewayAddress, rootFingerprint,
intermediateSerial, intermediateNotAfter, intermediateChainValid, istio
{name, version, meshID, clusterName, network}, remoteSecrets[] {name,
namespace, target, expected, healthy, error, server, tlsServerName, path
(direct <server>, or via gateway <host:port>)}, missingRemoteSecrets[]
(namespace/name), drift[] (strings). credentials[]: the reader tokens in
remote secrets {cluster, heldBy[], issuedAt, expiresAt, renewAt}. The table
lists the clusters, then every remote secret as a link (reader, target,
path and health), then every reader credential with its next renewal.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json", "yaml"); err != nil {
				return err
			}
			m, eng, done, err := g.readMesh(cmd.Context(), file, io.Discard)
			if err != nil {
				return err
			}
			defer done()
			st, err := eng.Status(cmd.Context(), m)
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, output)
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "mesh spec (default: the last one applied)")
	c.Flags().StringVarP(&output, "output", "o", "table", "output: table, json or yaml")
	return c
}

func printStatus(w io.Writer, st *server.Status, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		data, err := yaml.Marshal(st)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	case "table", "":
	default:
		return fmt.Errorf("unknown output %q (want table, json or yaml)", output)
	}
	fmt.Fprintf(w, "mesh %s (%s), root %s\n\n", st.Mesh, st.Topology, orDash(shortFP(st.RootFingerprint)))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tROLE\tNETWORK\tGATEWAY\tINTERMEDIATE EXPIRES\tROOT\tREMOTE SECRETS\tDRIFT")
	for _, c := range st.Clusters {
		role := string(c.Role)
		if c.DataplaneMode == deploy.DataplaneAmbient {
			role += " (ambient)" // sidecar, the default, goes unsaid
		}
		if !c.Reachable {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\tunreachable: %s\n", c.Name, role, c.Network, c.Error)
			continue
		}
		healthy := 0
		for _, rs := range c.RemoteSecrets {
			if rs.Healthy {
				healthy++
			}
		}
		exp := "-"
		if !c.IntermediateNotAfter.IsZero() {
			exp = c.IntermediateNotAfter.UTC().Format(time.DateOnly)
		}
		drift := "none"
		if len(c.Drift) > 0 {
			drift = strings.Join(c.Drift, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d healthy\t%s\n", c.Name, role, orDash(c.Network), orDash(c.GatewayAddress), exp,
			orDash(shortFP(c.RootFingerprint)), healthy, len(c.RemoteSecrets), drift)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// A hub with replicas says which one reconciles each cluster.
	owned := map[string][]string{}
	for _, c := range st.Clusters {
		if c.Owner != "" {
			owned[c.Owner] = append(owned[c.Owner], c.Name)
		}
	}
	if len(owned) > 0 {
		fmt.Fprintln(w)
		for _, o := range slices.Sorted(maps.Keys(owned)) {
			fmt.Fprintf(w, "replica %s reconciles %s\n", o, strings.Join(owned[o], ", "))
		}
	}
	if err := printLinks(w, st); err != nil {
		return err
	}
	return printCredentials(w, st)
}

// printLinks lists every remote secret as a link: who reads whom, by which
// path (direct, or via the target's east-west gateway) and whether the
// reader authenticates through it.
func printLinks(w io.Writer, st *server.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	n := 0
	for _, c := range st.Clusters {
		for _, rs := range c.RemoteSecrets {
			if n == 0 {
				fmt.Fprintln(w)
				fmt.Fprintln(tw, "READER\tTARGET\tPATH\tSECRET\tHEALTHY")
			}
			n++
			health := "yes"
			if !rs.Healthy {
				health = "no: " + rs.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s\n", c.Name, orDash(rs.Target), orDash(rs.Path), rs.Namespace, rs.Name, health)
		}
	}
	return tw.Flush()
}

// printCredentials lists the reader tokens with their expiry and next renewal.
func printCredentials(w io.Writer, st *server.Status) error {
	if len(st.Credentials) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "READER CREDENTIAL OF\tHELD BY\tISSUED\tEXPIRES\tNEXT RENEWAL")
	for _, c := range st.Credentials {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Cluster, orDash(strings.Join(c.HeldBy, ",")), when(c.IssuedAt), when(c.ExpiresAt), when(c.RenewAt))
	}
	return tw.Flush()
}

func newCheckCommand(g *globals) *cobra.Command {
	var file, output string
	c := &cobra.Command{
		Use:   "check [-f mesh.yaml]",
		Short: "Diagnose the mesh: named checks, each with a fix hint on failure",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			m, eng, done, err := g.readMesh(cmd.Context(), file, io.Discard)
			if err != nil {
				return err
			}
			defer done()
			checks, err := eng.Check(cmd.Context(), m)
			if err != nil {
				return err
			}
			failed := printChecks(cmd.OutOrStdout(), checks, output)
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "mesh spec (default: the last one applied)")
	c.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return c
}

func printChecks(w io.Writer, checks []server.Check, output string) int {
	failed := 0
	for _, c := range checks {
		if !c.OK {
			failed++
		}
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(checks)
		return failed
	}
	for _, c := range checks {
		mark := "√"
		if !c.OK {
			mark = "×"
		}
		where := ""
		if c.Cluster != "" {
			where = " [" + c.Cluster + "]"
		}
		line := fmt.Sprintf("%s %s%s", mark, c.Name, where)
		if c.Message != "" {
			line += ": " + c.Message
		}
		fmt.Fprintln(w, line)
		if !c.OK && c.Hint != "" {
			fmt.Fprintf(w, "    hint: %s\n", c.Hint)
		}
	}
	fmt.Fprintf(w, "\n%d checks, %d failed\n", len(checks), failed)
	return failed
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortFP(fp string) string {
	if len(fp) > 23 {
		return fp[:23] + "…"
	}
	return fp
}

// checkOutput refuses an unknown -o before anything is read or written.
func checkOutput(output string, allowed ...string) error {
	for _, a := range allowed {
		if output == a {
			return nil
		}
	}
	return fmt.Errorf("unknown output %q (want %s)", output, strings.Join(allowed, ", "))
}
