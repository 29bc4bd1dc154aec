// Command flotilla federates Istio service meshes across Kubernetes clusters.
package main

import (
	"fmt"
	"os"

	"github.com/flotillamesh/flotilla/cli"
)

// Set by the linker: -X main.version=... -X main.commit=...
var (
	version string
	commit  string
)

func main() {
	if err := cli.NewRoot(cli.ReadBuildInfo(version, commit)).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla: "+err.Error())
		os.Exit(1)
	}
}
