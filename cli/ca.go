package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/pki"
)

func newCACommand(g *globals) *cobra.Command {
	ca := &cobra.Command{
		Use:   "ca",
		Short: "The mesh's certificate authorities: show, export, rotate",
	}
	var output string
	show := &cobra.Command{
		Use:   "show",
		Short: "List the root, every cluster's intermediate (subject, serial, fingerprint, not-after) and the revoked intermediates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, done, err := g.readHub(cmd.Context(), io.Discard)
			if err != nil {
				return err
			}
			defer done()
			info, err := h.CAShow(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CA\tSUBJECT\tSERIAL\tSHA-256 FINGERPRINT\tNOT AFTER")
			for _, r := range info.Roots {
				fmt.Fprintf(tw, "root\t%s\t%s\t%s\t%s\n", r.Subject, r.Serial, r.Fingerprint, r.NotAfter.UTC().Format(time.RFC3339))
			}
			names := make([]string, 0, len(info.Intermediates))
			for n := range info.Intermediates {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				r := info.Intermediates[n]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n, r.Subject, r.Serial, r.Fingerprint, r.NotAfter.UTC().Format(time.RFC3339))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(info.Revoked) > 0 {
				fmt.Fprintln(w, "\nrevoked intermediates (clusters that left the mesh):")
				tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CLUSTER\tSERIAL\tREVOKED AT")
				for _, r := range info.Revoked {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Cluster, r.Serial, r.RevokedAt.UTC().Format(time.RFC3339))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if c := info.CRL; c != nil && c.Unenforced != "" {
				fmt.Fprintf(w, "revocation not enforced: %s\n", c.Unenforced)
			} else if c != nil {
				fmt.Fprintf(w, "CRL number %d, next update %s, in every cacerts as %s (sha256 %s)\n", c.Number, c.NextUpdate.UTC().Format(time.RFC3339), pki.CRLFile, shortFP(c.SHA256))
			}
			if info.RootRotation != "" {
				fmt.Fprintf(w, "\nroot rotation under way: %s done; run flotilla ca rotate root for the next step\n", info.RootRotation)
			}
			return nil
		},
	}
	show.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")

	var cluster, namespace string
	export := &cobra.Command{
		Use:   "export --cluster NAME DIR",
		Short: "Write the cluster's four cacerts files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) into DIR",
		Long: `export writes what the manual procedure writes: ca-key.pem holds the
intermediate's private key, so DIR gets mode 0700 and the key file 0600.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cluster == "" {
				return fmt.Errorf("--cluster is required")
			}
			h, done, err := g.openHub(cmd.Context(), io.Discard, true)
			if err != nil {
				return err
			}
			defer done()
			cc, err := h.ClusterCACerts(cmd.Context(), cluster, namespace)
			if err != nil {
				return err
			}
			if err := cc.WriteFiles(args[0]); err != nil {
				return fmt.Errorf("%s: export cacerts to %s: %w", cluster, args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %v into %s\n", pki.CACertsFiles, args[0])
			return nil
		},
	}
	export.Flags().StringVar(&cluster, "cluster", "", "cluster name")
	export.Flags().StringVar(&namespace, "namespace", "istio-system", "control-plane namespace the intermediate names (istiod.<ns>.svc)")

	var rotateOutput string
	rotate := &cobra.Command{
		Use:   "rotate (intermediate NAME | root)",
		Short: "Issue a new intermediate for a cluster under the same root, or take the next step of a root rotation",
		Long: `rotate intermediate NAME issues a new intermediate for the cluster under the
same root and replaces its cacerts.

rotate root takes one step of a root rotation per call, and rolls it out to
every cluster with an apply of the last applied spec:
  1. trust-both: a new root is generated; every root-cert.pem holds both roots.
  2. sign-with-new: the new root signs; every intermediate is re-issued under
     it; certificates from old and new intermediates still verify each other.
  3. done: the old root is dropped.
Between steps, let istiod and the workloads pick up what the last step wrote
(the output says what to wait for). -o json prints the step and the apply.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case args[0] == "intermediate" && len(args) == 2:
			case args[0] == "root" && len(args) == 1:
				if err := checkOutput(rotateOutput, "table", "json"); err != nil {
					return err
				}
				h, done, err := g.openHub(cmd.Context(), cmd.ErrOrStderr(), true)
				if err != nil {
					return err
				}
				defer done()
				r, err := h.RotateRoot(cmd.Context(), nil)
				if r == nil {
					return err
				}
				if rotateOutput == "json" {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if encErr := enc.Encode(r); encErr != nil {
						return encErr
					}
				} else {
					if r.Apply != nil {
						if perr := printReport(cmd.OutOrStdout(), r.Apply, "table", false); perr != nil {
							return perr
						}
					}
					fmt.Fprintf(cmd.OutOrStdout(), "\nroot rotation: %s; signing root %s; trusted roots %v\nnext: %s\n", r.Phase, r.SigningRoot, r.TrustedRoots, r.Next)
				}
				if err != nil {
					return err
				}
				if r.Apply != nil {
					return r.Apply.Err()
				}
				return nil
			default:
				return fmt.Errorf("ca rotate %s: usage: flotilla ca rotate intermediate NAME | flotilla ca rotate root", strings.Join(args, " "))
			}
			h, done, err := g.openHub(cmd.Context(), cmd.ErrOrStderr(), true)
			if err != nil {
				return err
			}
			defer done()
			step, err := h.RotateIntermediate(cmd.Context(), nil, args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s %s (%s)\n", step.Cluster, step.Step, step.Action, step.Detail)
			return nil
		},
	}
	var specFile string
	csr := &cobra.Command{
		Use:   "csr [-f mesh.yaml] DIR",
		Short: "Offline root: write one CSR per cluster without an intermediate (<cluster>.csr.pem) for the root's holder to sign",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, h, done, err := g.meshHub(cmd.Context(), specFile)
			if err != nil {
				return err
			}
			defer done()
			csrs, err := h.IntermediateCSRs(cmd.Context(), m)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			names := make([]string, 0, len(csrs))
			for n := range csrs {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				p := filepath.Join(args[0], n+".csr.pem")
				if err := os.WriteFile(p, csrs[n], 0o644); err != nil {
					return fmt.Errorf("%s: write CSR: %w", n, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", n, p)
			}
			if len(names) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "every cluster has an intermediate: no CSR needed")
			}
			return nil
		},
	}
	csr.Flags().StringVarP(&specFile, "file", "f", "", "mesh spec (default: the last one applied)")
	accept := &cobra.Command{
		Use:   "accept [-f mesh.yaml] --cluster NAME SIGNED.pem",
		Short: "Offline root: take back a cluster's signed intermediate (checked against its CSR key, the root and the profile)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cluster == "" {
				return fmt.Errorf("--cluster is required")
			}
			signed, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			m, h, done, err := g.meshHub(cmd.Context(), specFile)
			if err != nil {
				return err
			}
			defer done()
			in, err := h.AcceptIntermediate(cmd.Context(), m, cluster, signed)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: accepted intermediate serial %s; run flotilla apply to write cacerts\n", cluster, pki.Describe(in.Cert).Serial)
			return nil
		},
	}
	accept.Flags().StringVarP(&specFile, "file", "f", "", "mesh spec (default: the last one applied)")
	accept.Flags().StringVar(&cluster, "cluster", "", "cluster name")
	rotate.Flags().StringVarP(&rotateOutput, "output", "o", "table", "output of rotate root: table or json")
	ca.AddCommand(show, export, rotate, csr, accept, newCRLCommand(g))
	return ca
}

// newCRLCommand is the offline root's half of revocation: the hub cannot
// sign the root's CRL without the root key, so its holder signs it with
// openssl from the files the hub writes, as with intermediate CSRs.
func newCRLCommand(g *globals) *cobra.Command {
	crl := &cobra.Command{
		Use:   "crl",
		Short: "Offline root: have the root's CRL (the revoked intermediates of clusters that left) signed where the root key is kept",
	}
	request := &cobra.Command{
		Use:   "request DIR",
		Short: "Write the openssl database of revoked intermediates, the next CRL number, the root and a config into DIR, and print the openssl command that signs the CRL",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, done, err := g.openHub(cmd.Context(), io.Discard, true)
			if err != nil {
				return err
			}
			defer done()
			req, err := h.RootCRLRequest(cmd.Context())
			if err != nil {
				return err
			}
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			names := make([]string, 0, len(req.Files))
			for n := range req.Files {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				if err := os.WriteFile(filepath.Join(args[0], n), req.Files[n], 0o644); err != nil {
					return fmt.Errorf("crl request: %w", err)
				}
			}
			w := cmd.OutOrStdout()
			for _, r := range req.Revoked {
				fmt.Fprintf(w, "revoked: %s intermediate serial %s at %s\n", r.Cluster, r.Serial, r.RevokedAt.UTC().Format(time.RFC3339))
			}
			fmt.Fprintf(w, "wrote %v into %s\nsign where the root key is kept, in %s:\n  %s\nthen: flotilla ca crl accept root-crl.pem; flotilla apply\n", names, args[0], args[0], req.Command)
			return nil
		},
	}
	accept := &cobra.Command{
		Use:   "accept SIGNED-CRL.pem",
		Short: "Take back the root's CRL signed offline (checked: the mesh root's signature, every revoked intermediate listed, a higher number); the next apply writes it into every cacerts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			signed, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			h, done, err := g.openHub(cmd.Context(), io.Discard, true)
			if err != nil {
				return err
			}
			defer done()
			info, err := h.AcceptRootCRL(cmd.Context(), signed)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "accepted CRL number %d, next update %s; run flotilla apply to write it into every cacerts, and sign the next one before then\n",
				info.Number, info.NextUpdate.UTC().Format(time.RFC3339))
			return nil
		},
	}
	crl.AddCommand(request, accept)
	return crl
}
