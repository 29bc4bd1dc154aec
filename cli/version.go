package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Build information, set by the linker (see the Makefile); a plain go build
// falls back to what the Go toolchain recorded.
type BuildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

// ReadBuildInfo completes the linker-provided version and commit with what
// the toolchain recorded in the binary.
func ReadBuildInfo(version, commit string) BuildInfo {
	bi := BuildInfo{Version: version, Commit: commit, Go: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		if bi.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			bi.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && bi.Commit == "" {
				bi.Commit = s.Value
			}
		}
	}
	if bi.Version == "" {
		bi.Version = "dev"
	}
	if bi.Commit == "" {
		bi.Commit = "unknown"
	}
	return bi
}

func printVersion(w io.Writer, bi BuildInfo, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(bi)
	case "", "table", "text":
		_, err := fmt.Fprintf(w, "flotilla %s (commit %s, %s)\n", bi.Version, bi.Commit, bi.Go)
		return err
	}
	return fmt.Errorf("unknown output format %q (want text or json)", output)
}
