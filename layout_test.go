// Package flotilla holds no code: this file checks the layering of the
// repository's top-level folders, so that `go test ./...` (and `make test`)
// fails when an import runs the wrong way.
package flotilla

import (
	"go/build"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// layers ranks the product's top-level folders: a package may import its
// own folder and the folders ranked below it, never one ranked above or
// beside it. deploy is the floor (cluster connections and apply, topology
// vocabulary and mesh plan, Istio control-plane objects); pki, federation
// and gateways stand on it side by side; the hub (server) drives them; the
// CLI drives the hub.
var layers = map[string]int{
	"deploy":     1,
	"pki":        2,
	"federation": 2,
	"gateways":   2,
	"server":     3,
	"cli":        4,
}

// scenarios (the lab, the emulator, end-to-end tests) may import anything;
// the product never imports it, not even from its tests' non-test helpers.
const scenarios = "scenarios"

func TestImportLayers(t *testing.T) {
	const module = "github.com/flotillamesh/flotilla/"
	imports := packageImports(t)
	if len(imports) == 0 {
		t.Fatal("found no packages: run the test from the repository root")
	}
	var wrong []string
	for src, deps := range imports {
		top := topFolder(src)
		if top == scenarios {
			continue
		}
		rank, known := layers[top]
		if !known {
			wrong = append(wrong, src+": folder "+top+" has no place in the layers (add it to layers in layout_test.go)")
			continue
		}
		for _, dep := range deps {
			if !strings.HasPrefix(dep, module) {
				continue
			}
			dst := topFolder(strings.TrimPrefix(dep, module))
			switch {
			case dst == top:
			case dst == scenarios:
				wrong = append(wrong, src+" -> "+dep+": the product never imports scenarios")
			case layers[dst] >= rank:
				wrong = append(wrong, src+" -> "+dep+": "+top+" may import only folders below it (cli > server > pki|federation|gateways > deploy)")
			}
		}
	}
	sort.Strings(wrong)
	for _, w := range wrong {
		t.Error(w)
	}
}

func topFolder(pkg string) string {
	top, _, _ := strings.Cut(pkg, "/")
	return top
}

// packageImports maps every package directory of this module (relative to
// the repository root) to its non-test imports, as go/build reads them for
// this platform. Directories of other modules (scenarios/upstream) and
// testdata are skipped.
func packageImports(t *testing.T) map[string][]string {
	t.Helper()
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "bin") {
			return filepath.SkipDir
		}
		if path != root {
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir
			}
		}
		pkg, err := build.Default.ImportDir(path, 0)
		if err != nil {
			if _, none := err.(*build.NoGoError); none {
				return nil
			}
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		out[filepath.ToSlash(rel)] = pkg.Imports
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
