package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// RenderYAML writes objs as one multi-document YAML stream, in order, ready
// for `kubectl apply --server-side -f` or a GitOps repository.
func RenderYAML(objs []kube.Object) ([]byte, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		data, err := yaml.Marshal(o.Unstructured().Object)
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", o.Ref(), err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(data)
	}
	return buf.Bytes(), nil
}

// DecodeYAML reads a multi-document YAML (or JSON) stream such as Render
// writes; empty documents are skipped.
func DecodeYAML(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("decode YAML document %d: %w", len(out)+1, err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}
