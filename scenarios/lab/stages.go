package lab

import (
	_ "embed"
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// DataPlaneAnnotation, set to DataPlaneReady on a pod by whoever plays its
// data plane, lets kwok mark the pod Ready (kwok-pod-stages.yaml). Until
// then a lab pod runs, with its address, but is not Ready: as a real pod
// whose sidecar has no config yet.
const (
	DataPlaneAnnotation = "lab.flotilla.dev/data-plane"
	DataPlaneReady      = "ready"
)

//go:embed kwok-pod-stages.yaml
var podStages []byte

// labStages is kwok's stage configuration for a lab cluster: the stages
// built with the binaries (file), with kwok's pod-ready stage replaced by
// the lab's two pod stages.
func labStages(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("kwok stages: %w", err)
	}
	var docs []string
	replaced := false
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return nil, fmt.Errorf("kwok stages %s: %w", file, err)
		}
		if meta.Kind == "Stage" && meta.Metadata.Name == "pod-ready" {
			replaced = true
			continue
		}
		docs = append(docs, strings.TrimSpace(doc))
	}
	if !replaced {
		return nil, fmt.Errorf("kwok stages %s: no pod-ready stage to replace", file)
	}
	docs = append(docs, strings.TrimSpace(string(podStages)))
	return []byte(strings.Join(docs, "\n---\n") + "\n"), nil
}
