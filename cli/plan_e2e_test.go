package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/federation"
)

// TestPlanEmptyState: plan before the first apply shows the root to
// generate and everything to create, and leaves no state behind.
func TestPlanEmptyState(t *testing.T) {
	l := testLab.Get(t)
	resetClusters(t, l)
	e := newEnv(t)
	e.key = "" // a first-time user: no state, no key yet
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	for _, args := range [][]string{{"plan", "-f", mesh}, {"apply", "--dry-run", "-f", mesh}} {
		out, stderr, code := e.run(t, args...)
		if code != 0 {
			t.Fatalf("%v on an empty state: exit %d: %s", args, code, stderr)
		}
		for _, want := range []string{"root CA", "would generate", "east", "west", "would create", "nothing changed"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: the plan does not say %q:\n%s", args, want, out)
			}
		}
		if _, err := os.Stat(e.state); err == nil {
			t.Fatalf("%v wrote a state at %s", args, e.state)
		}
	}
}

// TestRenderLeavesOut: --render leaves out what its help says it does.
func TestRenderLeavesOut(t *testing.T) {
	l := testLab.Get(t)
	e := newEnv(t)
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	dir := filepath.Join(e.dir, "render")
	if _, stderr, code := e.run(t, "apply", "-f", mesh, "--render", dir); code != 0 {
		t.Fatalf("render: %s", stderr)
	}
	for _, c := range []string{"east", "west"} {
		data, err := os.ReadFile(filepath.Join(dir, c+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, absent := range []string{"kind: Secret", federation.ReaderServiceAccount, federation.ReaderClusterRoleName(""), "kind: Certificate", "kind: Issuer", "csr-agent"} {
			if strings.Contains(string(data), absent) {
				t.Errorf("%s.yaml holds %q, which --render says it leaves out", c, absent)
			}
		}
	}
}
