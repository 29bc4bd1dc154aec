package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// crd is one CustomResourceDefinition as JSON, ready for server-side apply.
type crd struct {
	name string
	json []byte
}

// loadCRDs reads every CustomResourceDefinition in the YAML files below dir.
func loadCRDs(dir string) ([]crd, error) {
	var out []crd
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range splitYAML(data) {
			j, err := yaml.YAMLToJSON(doc)
			if err != nil {
				return fmt.Errorf("%s document %d: %w", path, i+1, err)
			}
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(j, &meta); err != nil {
				return fmt.Errorf("%s document %d: %w", path, i+1, err)
			}
			if meta.Kind == "CustomResourceDefinition" {
				out = append(out, crd{name: meta.Metadata.Name, json: j})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("CRDs in %s: %w", dir, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CustomResourceDefinition found in %s", dir)
	}
	return out, nil
}

func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), data...), []byte("\n---")) {
		if len(bytes.TrimSpace(d)) > 0 && !onlyComments(d) {
			docs = append(docs, d)
		}
	}
	return docs
}

func onlyComments(d []byte) bool {
	for _, l := range bytes.Split(d, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

// installCRDs applies the CRDs and waits until each is Established.
func installCRDs(ctx context.Context, cfg *rest.Config, crds []crd) error {
	cs, err := apiextensions.NewForConfig(cfg)
	if err != nil {
		return err
	}
	force := true
	for _, c := range crds {
		// A starved API server answers a CRD apply with its own timeout;
		// the apply is idempotent, so it is tried again for a while.
		err := wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := cs.ApiextensionsV1().CustomResourceDefinitions().Patch(ctx, c.name, types.ApplyPatchType, c.json,
				metav1.PatchOptions{FieldManager: "flotilla-lab", Force: &force})
			if apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) {
				return false, nil
			}
			return err == nil, err
		})
		if err != nil {
			return fmt.Errorf("apply CRD %s: %w", c.name, err)
		}
	}
	want := map[string]bool{}
	for _, c := range crds {
		want[c.name] = true
	}
	// Establishing ~100 CRDs is CPU-bound in the API server (OpenAPI for
	// each): on a starved machine it takes minutes, not seconds.
	var missing []string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		done := map[string]bool{}
		for _, item := range list.Items {
			if want[item.Name] && established(&item) {
				done[item.Name] = true
			}
		}
		missing = missing[:0]
		for _, c := range crds {
			if !done[c.name] {
				missing = append(missing, c.name)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil && len(missing) > 0 {
		if len(missing) > 5 {
			missing = append(missing[:5], fmt.Sprintf("and %d more", len(missing)-5))
		}
		return fmt.Errorf("CRDs not established: %s: %w", strings.Join(missing, ", "), err)
	}
	return err
}

func established(c *apiextensionsv1.CustomResourceDefinition) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// gatewayAPICRDDir is the standard channel of the Gateway API CRDs
// (config/crd/standard of the sigs.k8s.io/gateway-api module the flotilla
// module requires), or $FLOTILLA_GATEWAY_API_CRDS: ambient east-west
// gateways are Gateway API Gateways, and the real schemas check them.
func gatewayAPICRDDir(ctx context.Context) (string, error) {
	if d := os.Getenv("FLOTILLA_GATEWAY_API_CRDS"); d != "" {
		return d, nil
	}
	root := RepoRoot()
	if root == "" {
		return "", fmt.Errorf("Gateway API CRDs: set FLOTILLA_GATEWAY_API_CRDS, or run from the flotilla checkout")
	}
	list := exec.CommandContext(ctx, goTool(), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	list.Dir, list.Env = root, goBuildEnv()
	out, err := list.Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return "", fmt.Errorf("find the sigs.k8s.io/gateway-api module directory (or set FLOTILLA_GATEWAY_API_CRDS): %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard"), nil
}
