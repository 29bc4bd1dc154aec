// Package cli is the flotilla command: one binary that works embedded (on
// the local state file) or against a running hub.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRoot builds the flotilla command tree.
func NewRoot(bi BuildInfo) *cobra.Command {
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "Federate Istio service meshes across Kubernetes clusters",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var output string
	version := &cobra.Command{
		Use:   "version",
		Short: "Print flotilla's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printVersion(cmd.OutOrStdout(), bi, output)
		},
	}
	version.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	root.AddCommand(version)
	return root
}
