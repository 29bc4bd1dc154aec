package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a spec.
type Problem struct {
	// Line is the line in the document, 0 when the field was not in it.
	Line int `json:"line,omitempty"`
	// Field is the field path, e.g. spec.clusters[1].name.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Field != "" {
		b.WriteString(p.Field + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error is every problem found in a spec, in document order.
type Error struct {
	// Source names the document (usually its file path).
	Source   string
	Problems []Problem
}

func (e *Error) Error() string {
	prefix := ""
	if e.Source != "" {
		prefix = e.Source + ": "
	}
	if len(e.Problems) == 1 {
		return prefix + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s%d problems:", prefix, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

// LoadFile reads, parses and validates the spec at path.
func LoadFile(path string) (*Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mesh spec: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes one Mesh document strictly, applies defaults and validates
// it. Every problem (decoding and validation) comes back at once in an
// *Error; source names the document in messages.
func Parse(source string, data []byte) (*Mesh, error) {
	root, perr := document(data)
	if perr != nil {
		return nil, &Error{Source: source, Problems: []Problem{*perr}}
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Source: source, Problems: []Problem{{Line: root.Line, Message: "expected a mapping (a Mesh document), got " + describe(root)}}}
	}
	d := &decoder{lines: map[string]int{}, failed: map[string]bool{}}
	m := &Mesh{}
	d.decode(root, reflect.ValueOf(m).Elem(), "")
	m.lines = d.lines
	m.Default()
	problems := d.problems
	for _, p := range m.validate() {
		// A field that did not decode already has its problem; validating
		// its zero value would only add noise.
		if !d.covered(p.Field) {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &Error{Source: source, Problems: problems}
	}
	m.validHash = m.Hash()
	return m, nil
}

// document returns the single document's root node.
func document(data []byte) (*yaml.Node, *Problem) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Problem{Message: "empty document: expected a Mesh"}
		}
		return nil, &Problem{Message: yamlMessage(err)}
	}
	if len(doc.Content) == 0 {
		return nil, &Problem{Message: "empty document: expected a Mesh"}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, &Problem{Line: next.Line, Message: "a second YAML document: a mesh spec is exactly one document"}
	case !errors.Is(err, io.EOF):
		return nil, &Problem{Message: yamlMessage(err)}
	}
	return doc.Content[0], nil
}

// yamlMessage drops the library's "yaml: " prefix; its messages carry the line.
func yamlMessage(err error) string {
	return "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")
}

var durationType = reflect.TypeOf(Duration{})

// decoder fills a value from a YAML node tree field by field, so that every
// problem names its field path and line, and all of them are reported.
type decoder struct {
	problems []Problem
	lines    map[string]int
	failed   map[string]bool
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.failed[path] = true
	d.problems = append(d.problems, Problem{Line: n.Line, Field: path, Message: fmt.Sprintf(format, args...)})
}

// covered reports whether path or one of its parents failed to decode.
func (d *decoder) covered(path string) bool {
	for p := path; p != ""; p = parent(p) {
		if d.failed[p] {
			return true
		}
	}
	return false
}

func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if _, known := d.lines[path]; !known && path != "" {
		d.lines[path] = n.Line
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // absent and null are the same: the default applies
	}
	if v.Type() == durationType {
		d.duration(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.mapping(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			hint := ""
			if n.Kind == yaml.ScalarNode {
				hint = " (quote it to make it a string)"
			}
			d.fail(n, path, "expected a string, got %s%s", describe(n), hint)
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int32:
		var i int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.fail(n, path, "expected an integer, got %s", describe(n))
			return
		}
		if v.OverflowInt(i) {
			d.fail(n, path, "%d is out of range", i)
			return
		}
		v.SetInt(i)
	default:
		// Only reachable if a field of an unsupported type is added to the spec types.
		panic(fmt.Sprintf("spec: no decoder for %s (%s)", path, v.Type()))
	}
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.fail(n, path, "expected a duration such as \"8760h\", got %s", describe(n))
		return
	}
	t, err := time.ParseDuration(n.Value)
	if err != nil {
		d.fail(n, path, "%q is not a duration (use Go durations such as \"8760h\" or \"90m\")", n.Value)
		return
	}
	if t <= 0 {
		d.fail(n, path, "%q: must be positive", n.Value)
		return
	}
	v.Set(reflect.ValueOf(Duration{t}))
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := map[string]int{}
	var names []string
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		fields[name] = i
		names = append(names, name)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		fp := join(path, key)
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "a mapping key must be a plain name, got %s", describe(k))
			continue
		}
		if line, dup := seen[key]; dup {
			d.fail(k, fp, "field given twice (first on line %d)", line)
			continue
		}
		seen[key] = k.Line
		// A field's line is its key's: a block value starts on the next line.
		d.lines[fp] = k.Line
		idx, ok := fields[key]
		if !ok {
			msg := fmt.Sprintf("unknown field %q", key)
			if s := suggest(key, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.fail(k, fp, "%s", msg)
			continue
		}
		d.decode(val, v.Field(idx), fp)
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// describe names a node's type and value for a wrong-type message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		kinds := map[string]string{"!!str": "string", "!!int": "integer", "!!float": "number", "!!bool": "boolean", "!!timestamp": "timestamp", "!!binary": "binary"}
		k, ok := kinds[n.ShortTag()]
		if !ok {
			k = n.ShortTag()
		}
		return fmt.Sprintf("%s %q", k, n.Value)
	}
	return "an unexpected node"
}

// suggest returns the known name closest to key, if it is close enough to be
// a typo (case differences or at most two edits).
func suggest(key string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if strings.EqualFold(n, key) {
			return n
		}
		if dist := editDistance(strings.ToLower(key), strings.ToLower(n)); dist < bestDist {
			best, bestDist = n, dist
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
