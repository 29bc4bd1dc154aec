package spec

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds the strict parser arbitrary documents. A document is
// either refused with problems that each say something, or accepted; an
// accepted spec's canonical form parses back to the same canonical form, so
// that what the hub stores is what it would read again.
func FuzzParse(f *testing.F) {
	f.Add([]byte(mesh(with(twoClusters, "  topology: multi-primary")...)))
	f.Add([]byte(mesh("  topology: primary-remote", "  clusters:",
		"  - {name: east, context: east, network: n1}",
		"  - {name: west, context: west, network: n1, role: remote}")))
	f.Add([]byte(mesh("  pki:", "    mode: cert-manager", "    keyAlgorithm: ECDSA-P256", "  clusters:", "  - {name: a, context: a}")))
	f.Add([]byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\n---\nkind: Mesh\n"))
	f.Add([]byte("[1, 2]"))
	f.Add([]byte("spec: {clusters: [{name: &a x, context: *a}]}"))
	f.Add([]byte("spec:\n  clusters:\n  - name: \"\\u0000\"\n"))
	// Specs kept in the repository's scenarios and docs are seeds too.
	for _, glob := range []string{"../../scenarios/*.yaml", "../../scenarios/*/*.yaml", "testdata/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte("kind: Mesh")) {
				f.Add(data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse("fuzz.yaml", data)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) || len(se.Problems) == 0 {
				t.Fatalf("refusal without problems: %v", err)
			}
			for _, p := range se.Problems {
				if strings.TrimSpace(p.Message) == "" {
					t.Fatalf("problem without a message: %+v", p)
				}
			}
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		canon := m.Canonical()
		again, err := Parse("canonical", canon)
		if err != nil {
			t.Fatalf("canonical form of an accepted spec is refused: %v\n%s", err, canon)
		}
		if got := again.Canonical(); !bytes.Equal(got, canon) {
			t.Fatalf("canonical form changes on a second parse:\n%s\n%s", canon, got)
		}
	})
}
