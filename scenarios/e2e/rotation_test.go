package e2e

import (
	"encoding/json"
	"testing"
)

// TestRootRotation: traffic crosses between the clusters before, during and
// after a root rotation, one `flotilla ca rotate root` per step (trust both
// roots, sign with the new one, drop the old one).
func TestRootRotation(t *testing.T) {
	s := start(t, false, "east", "west")
	s.apply("multi-primary", "{name: east, context: east, network: network1}", "{name: west, context: west, network: network2}")
	r, code := s.verify(requests)
	wantAll(t, r, code, "east", "west")
	for _, phase := range []string{"trust-both", "sign-with-new", "done"} {
		var step struct {
			Phase        string   `json:"phase"`
			TrustedRoots []string `json:"trustedRoots"`
		}
		out := s.run("ca", "rotate", "root", "-o", "json")
		if err := json.Unmarshal([]byte(out), &step); err != nil {
			t.Fatalf("rotate root: output is not JSON: %v\n%s", err, out)
		}
		if step.Phase != phase {
			t.Fatalf("rotate root: phase %q, want %q", step.Phase, phase)
		}
		r, code := s.verify(requests)
		t.Logf("%s: trusted roots %v", phase, step.TrustedRoots)
		wantAll(t, r, code, "east", "west")
	}
}
