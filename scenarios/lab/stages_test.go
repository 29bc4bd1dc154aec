package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLabStages: kwok's pod-ready stage gives way to the lab's two pod
// stages; every other stage is kept; a stages file without pod-ready is an
// error rather than a lab whose pods turn Ready on their own.
func TestLabStages(t *testing.T) {
	stage := func(name string) string {
		return "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata:\n  name: " + name + "\nspec: {}"
	}
	for _, tc := range []struct {
		name    string
		in      []string
		want    []string
		notWant []string
		wantErr string
	}{
		{"replaces pod-ready", []string{stage("node-initialize"), stage("pod-ready"), stage("pod-delete")},
			[]string{"name: node-initialize", "name: pod-delete", "name: pod-running", "name: pod-ready-data-plane", DataPlaneAnnotation + ": " + DataPlaneReady},
			[]string{"name: pod-ready\n"}, ""},
		{"no pod-ready", []string{stage("node-initialize")}, nil, nil, "no pod-ready stage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "stages.yaml")
			if err := os.WriteFile(f, []byte(strings.Join(tc.in, "\n---\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := labStages(f)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(got), w) {
					t.Errorf("stages lack %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(string(got), w) {
					t.Errorf("stages still hold %q", w)
				}
			}
		})
	}
}
