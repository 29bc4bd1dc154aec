// Package e2e holds the end-to-end scenarios: per topology, lab clusters,
// flotilla apply, the data-plane emulator and flotilla verify, run as the
// binary a user runs. Each scenario starts clusters of its own (topologies
// do not share clusters), so the tests run one after another.
//
//	go test ./scenarios/e2e -run TestMultiPrimaryMultiNetwork -v
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/scenarios/emulator"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// flotilla is the binary under test, built once by TestMain.
var flotilla string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "flotilla-e2e-")
	if err != nil {
		panic(err)
	}
	flotilla = filepath.Join(dir, "flotilla")
	if err := buildFlotilla(dir, flotilla); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildFlotilla builds cli/flotilla into out.
func buildFlotilla(_, out string) error {
	b, err := exec.Command("go", "build", "-o", out, "github.com/flotillamesh/flotilla/cli/flotilla").CombinedOutput()
	if err != nil {
		return fmt.Errorf("build flotilla: %v\n%s", err, b)
	}
	return nil
}

// verifyResult is `flotilla verify -o json`.
type verifyResult struct {
	Versions []string `json:"versions"`
	Clients  []struct {
		Cluster     string         `json:"cluster"`
		Pod         string         `json:"pod"`
		Answers     map[string]int `json:"answers"`
		Failures    int            `json:"failures"`
		LastFailure string         `json:"lastFailure"`
		Missing     []string       `json:"missing"`
	} `json:"clients"`
	OK        bool `json:"ok"`
	Diagnosis []struct {
		Name    string `json:"name"`
		Cluster string `json:"cluster"`
		Message string `json:"message"`
	} `json:"diagnosis"`
	RequestMillis float64 `json:"requestMillis"`
}

func (r *verifyResult) answers(cluster string) map[string]int {
	for _, c := range r.Clients {
		if c.Cluster == cluster {
			return c.Answers
		}
	}
	return nil
}

func (r *verifyResult) pod(cluster string) string {
	for _, c := range r.Clients {
		if c.Cluster == cluster {
			return c.Pod
		}
	}
	return ""
}

func (r *verifyResult) lastFailure(cluster string) string {
	for _, c := range r.Clients {
		if c.Cluster == cluster {
			return c.LastFailure
		}
	}
	return ""
}

func (r *verifyResult) diagnosed(name, cluster string) bool {
	for _, d := range r.Diagnosis {
		if d.Name == name && (cluster == "" || d.Cluster == cluster) {
			return true
		}
	}
	return false
}

// scenario is one lab with the emulator running and a flotilla state.
type scenario struct {
	t    *testing.T
	lab  *lab.Lab
	dir  string
	env  []string
	mesh string
	// pki is the spec's pki field; "" is the builtin CA.
	pki string
}

// start starts the named clusters and the emulator for them.
func start(t *testing.T, certManager bool, names ...string) *scenario {
	t.Helper()
	if testing.Short() {
		t.Skip("starts lab clusters")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Clusters: names, Log: testWriter{t}, CertManager: certManager})
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() { l.Stop() })
	var cs []emulator.Cluster
	for _, c := range l.Clusters() {
		cs = append(cs, emulator.Cluster{Name: c.Name, Config: c.RESTConfig()})
	}
	em, err := emulator.New(emulator.Config{Clusters: cs, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	ectx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = em.Run(ectx) }()
	// Registered after the lab's: runs first, so the emulator stops before its clusters.
	t.Cleanup(func() { stop(); <-done })
	s := &scenario{t: t, lab: l, dir: t.TempDir()}
	s.env = append(os.Environ(), "KUBECONFIG="+l.Kubeconfig, "FLOTILLA_STATE="+filepath.Join(s.dir, "state.db"),
		"FLOTILLA_STATE_KEY_FILE="+filepath.Join(s.dir, "state.key"), "FLOTILLA_STATE_KEY=", "FLOTILLA_HUB=")
	s.run("state", "keygen", "--out", filepath.Join(s.dir, "state.key"))
	return s
}

func (s *scenario) exec(args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	c := exec.Command(flotilla, args...)
	c.Env = s.env
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

func (s *scenario) run(args ...string) string {
	s.t.Helper()
	out, errs, code := s.exec(args...)
	if code != 0 {
		s.t.Fatalf("flotilla %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// apply writes the mesh spec (clusters given as YAML flow lines) and applies it.
func (s *scenario) apply(topology string, clusters ...string) {
	s.t.Helper()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  topology: %s
  allowLoopbackAPIServers: true
  pki: %s
  clusters:
`, topology, orDefault(s.pki, "{keyAlgorithm: ECDSA-P256}"))
	for _, c := range clusters {
		doc += "  - " + c + "\n"
	}
	s.mesh = filepath.Join(s.dir, "mesh.yaml")
	if err := os.WriteFile(s.mesh, []byte(doc), 0o600); err != nil {
		s.t.Fatal(err)
	}
	s.run("apply", "-f", s.mesh)
}

// verify runs flotilla verify (with extra flags) and decodes its result;
// code is its exit code.
func (s *scenario) verify(requests int, extra ...string) (*verifyResult, int) {
	s.t.Helper()
	out, errs, code := s.exec(append([]string{"verify", "-o", "json", "--requests", fmt.Sprint(requests)}, extra...)...)
	var r verifyResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		s.t.Fatalf("verify: exit %d, output is not JSON: %v\n%s\n%s", code, err, out, errs)
	}
	s.t.Logf("verify: exit %d, %.0f ms per request, %+v", code, r.RequestMillis, r.Clients)
	return &r, code
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
