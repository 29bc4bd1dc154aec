package e2e

import (
	"encoding/json"
	"testing"
)

// TestRootRotation: traffic crosses between the clusters before, during and
// after a root rotation, one `flotilla ca rotate root` per step (trust both
// roots, sign with the new one, drop the old one). Between steps istiod is
// restarted in every cluster, as the step's output says: istiod's cacerts
// watcher takes a new intermediate under the same root but not a new root
// bundle (ISTIO_MULTIROOT_MESH is off by default). Each verify runs new
// sample pods, whose certificates come from the restarted istiods.
func TestRootRotation(t *testing.T) {
	s := startShared(t)
	s.apply("multi-primary", multiNetwork...)
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
		s.restartIstiod("east", "west")
		r, code := s.verify(requests)
		t.Logf("%s: trusted roots %v", phase, step.TrustedRoots)
		wantAll(t, r, code, "east", "west")
	}
}
