package lab

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpstreamVersionsMatchGoMod: the binary cache is keyed by the version
// constants, so they must name what the build modules really build.
func TestUpstreamVersionsMatchGoMod(t *testing.T) {
	root := RepoRoot()
	if root == "" {
		t.Fatal("not run from the flotilla checkout")
	}
	for _, tc := range []struct {
		gomod, module, version string
	}{
		{"scenarios/upstream/go.mod", "k8s.io/kubernetes", KubernetesVersion},
		{"scenarios/upstream/go.mod", "go.etcd.io/etcd/server/v3", EtcdVersion},
		{"scenarios/upstream/go.mod", "sigs.k8s.io/kwok", KwokVersion},
		{"scenarios/certmanager/go.mod", "github.com/cert-manager/cert-manager", CertManagerVersion},
		{"scenarios/istio/go.mod", "istio.io/istio", IstioVersion},
		{"scenarios/istio/go.mod", "helm.sh/helm/v4", HelmVersion},
	} {
		t.Run(tc.module, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(root, tc.gomod))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.module + " " + tc.version
			found := false
			for _, line := range strings.Split(string(data), "\n") {
				if strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), "// indirect")) == want {
					found = true
				}
			}
			if !found {
				t.Fatalf("%s does not require %s", tc.gomod, want)
			}
		})
	}
}

// TestKwokExecCRDMatchesModule: the embedded Exec CRD is kwok's own, of the
// kwok version the lab builds.
func TestKwokExecCRDMatchesModule(t *testing.T) {
	root := RepoRoot()
	if root == "" {
		t.Fatal("not run from the flotilla checkout")
	}
	cmd := exec.Command(goTool(), "mod", "download", "-json", "sigs.k8s.io/kwok@"+KwokVersion)
	cmd.Dir = filepath.Join(root, "scenarios/upstream")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download sigs.k8s.io/kwok@%s: %v", KwokVersion, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download: no module directory in %s (%v)", out, err)
	}
	want, err := os.ReadFile(filepath.Join(mod.Dir, "kustomize/crd/bases/kwok.x-k8s.io_execs.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(kwokExecCRD) {
		t.Fatalf("kwok-execs-crd.yaml differs from kwok %s's kustomize/crd/bases/kwok.x-k8s.io_execs.yaml: copy it again", KwokVersion)
	}
}
