package cli_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/cli"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var (
	testLab  = lab.NewShared("east", "west")
	flotilla string // the binary under test, built once by TestMain
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-cli-test-")
	if err != nil {
		panic(err)
	}
	flotilla = filepath.Join(dir, "flotilla")
	out, err := exec.Command("go", "build", "-o", flotilla, "github.com/flotillamesh/flotilla/cli/flotilla").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build flotilla: %v\n%s", err, out)
		os.Exit(1)
	}
	code := testLab.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	dir   string
	state string
	key   string
}

func newEnv(t *testing.T) env {
	t.Helper()
	d := t.TempDir()
	e := env{dir: d, state: filepath.Join(d, "state", "state.db"), key: filepath.Join(d, "state.key")}
	return e
}

func (e env) cmd(args ...string) *exec.Cmd {
	c := exec.Command(flotilla, args...)
	c.Env = append(os.Environ(), "FLOTILLA_STATE="+e.state, "FLOTILLA_STATE_KEY=", "FLOTILLA_STATE_KEY_FILE=")
	if e.key != "" {
		c.Env = append(c.Env, "FLOTILLA_STATE_KEY_FILE="+e.key)
	}
	return c
}

func (e env) run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	c := e.cmd(args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// keyedEnv is a fresh state with a new state key, as a user starts.
func keyedEnv(t *testing.T) env {
	t.Helper()
	e := newEnv(t)
	if _, stderr, code := e.run(t, "state", "keygen", "--out", e.key); code != 0 {
		t.Fatal(stderr)
	}
	return e
}

// appliedEnv is keyedEnv after applying the two-cluster mesh to clean clusters.
func appliedEnv(t *testing.T, l *lab.Lab) env {
	t.Helper()
	resetClusters(t, l)
	e := keyedEnv(t)
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	if _, stderr, code := e.run(t, "apply", "-f", mesh); code != 0 {
		t.Fatalf("apply: %s", stderr)
	}
	return e
}

func writeMesh(t *testing.T, dir, kubeconfig string) string {
	t.Helper()
	p := filepath.Join(dir, "mesh.yaml")
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, kubeconfig, kubeconfig)
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// resetClusters removes what an apply writes that would make a fresh state
// see the clusters as foreign: cacerts and the remote secrets.
func resetClusters(t *testing.T, l *lab.Lab) {
	t.Helper()
	ctx := context.Background()
	for _, c := range l.Clusters() {
		cs := c.Client()
		_ = cs.CoreV1().Secrets("istio-system").Delete(ctx, "cacerts", metav1.DeleteOptions{})
		_ = cs.CoreV1().Secrets("istio-system").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "istio/multiCluster=true"})
	}
}

// assertConverged checks the end state every apply must reach: one root in
// both clusters equal to the state's, valid chains, both remote secrets.
func assertConverged(t *testing.T, l *lab.Lab, e env) {
	t.Helper()
	ctx := context.Background()
	out, stderr, code := e.run(t, "ca", "show", "-o", "json")
	if code != 0 {
		t.Fatalf("ca show: %s", stderr)
	}
	roots := map[string]bool{}
	for _, name := range []string{"east", "west"} {
		kc, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := pki.ReadCACerts(ctx, kc, "istio-system")
		if err != nil || cc == nil {
			t.Fatalf("%s: no cacerts: %v", name, err)
		}
		if err := cc.CACerts.Validate(time.Now()); err != nil {
			t.Fatalf("%s: cacerts chain: %v", name, err)
		}
		info, _ := cc.CACerts.Describe()
		roots[info.Roots[0].Fingerprint] = true
		if !strings.Contains(out, info.Roots[0].Fingerprint) {
			t.Fatalf("%s: cacerts root %s is not the state's root", name, info.Roots[0].Fingerprint)
		}
		other := map[string]string{"east": "west", "west": "east"}[name]
		if _, err := kc.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-"+other, metav1.GetOptions{}); err != nil {
			t.Fatalf("%s: remote secret for %s: %v", name, other, err)
		}
	}
	if len(roots) != 1 {
		t.Fatalf("clusters hold %d roots, want 1", len(roots))
	}
}

// TestKilledApplyConverges kills `flotilla apply` with SIGKILL at 30 points
// of its own steps (server.Hub.Hook: progress lines and journal entries,
// through FLOTILLA_TEST_CRASH_AT), spread over the whole apply as a clean
// run lists them, then re-runs it: each time the end state is the same, with
// one root. A run that was not killed at its point fails the test.
func TestKilledApplyConverges(t *testing.T) {
	l := testLab.Get(t)
	points := crashPoints(t, l)
	const runs = 30
	if len(points) < runs {
		t.Fatalf("a clean apply has %d crash points, want at least %d", len(points), runs)
	}
	for i := range runs {
		at := 1 + i*(len(points)-1)/(runs-1) // first to last point, evenly
		t.Run(fmt.Sprintf("kill at point %d of %d", at, len(points)), func(t *testing.T) {
			resetClusters(t, l)
			e := keyedEnv(t)
			mesh := writeMesh(t, e.dir, l.Kubeconfig)
			c := e.cmd("apply", "-f", mesh)
			c.Env = append(c.Env, cli.CrashEnv+"="+strconv.Itoa(at))
			var stderr bytes.Buffer
			c.Stderr = &stderr
			err := c.Run()
			var ee *exec.ExitError
			killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
			if !killed || !strings.Contains(stderr.String(), fmt.Sprintf("crash point %d: ", at)) {
				t.Fatalf("apply was not killed at point %d (%v):\n%s", at, err, stderr.String())
			}
			t.Logf("killed at point %d: %s", at, lastLine(stderr.String()))
			if _, stderr, code := e.run(t, "apply", "-f", mesh); code != 0 {
				t.Fatalf("re-run after the kill: exit %d: %s", code, stderr)
			}
			assertConverged(t, l, e)
		})
	}
}

// crashPoints lists the points of a clean apply on reset clusters.
func crashPoints(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	resetClusters(t, l)
	e := keyedEnv(t)
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	c := e.cmd("apply", "-f", mesh)
	c.Env = append(c.Env, cli.CrashEnv+"=list")
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("clean apply: %v\n%s", err, stderr.String())
	}
	var points []string
	for line := range strings.Lines(stderr.String()) {
		if _, p, ok := strings.Cut(line, "crash point "); ok {
			points = append(points, strings.TrimSpace(p))
		}
	}
	return points
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestBadFlags: each bad invocation fails with its message and writes nothing.
func TestBadFlags(t *testing.T) {
	l := testLab.Get(t)
	e := newEnv(t)
	e.key = "" // no state key anywhere
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	bad := filepath.Join(e.dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n  topology: star\n  clusters: []\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"apply without -f", []string{"apply"}, "-f mesh.yaml is required"},
		{"apply without a state key", []string{"apply", "-f", mesh}, "no state key"},
		{"apply with an invalid spec", []string{"apply", "-f", bad}, "spec.topology"},
		{"apply with a missing spec file", []string{"apply", "-f", filepath.Join(e.dir, "nope.yaml")}, "nope.yaml"},
		{"status with unknown output", []string{"status", "-f", mesh, "-o", "xml"}, "unknown output"},
		{"ca export without --cluster", []string{"ca", "export", e.dir}, "--cluster is required"},
		{"ca rotate without a name", []string{"ca", "rotate", "intermediate"}, "usage: flotilla ca rotate intermediate NAME"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"unknown flag", []string{"apply", "--frob"}, "unknown flag"},
		{"adopt and replace together", []string{"apply", "-f", mesh, "--adopt-cacerts", "--replace-cacerts"}, "exclude each other"},
		{"state keygen without --out", []string{"state", "keygen"}, "--out FILE is required"},
		{"version with unknown output", []string{"version", "-o", "xml"}, "unknown output format"},
		{"csr-agent without its cluster and trust bundle", []string{"csr-agent"}, "--cluster-name and --trust-bundle-file are required"},
		{"csr-agent with a garbage trust bundle", []string{"csr-agent", "--cluster-name", "east", "--trust-bundle-file", bad}, "trust bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := e.run(t, tc.args...)
			if code == 0 {
				t.Fatalf("exit 0, want failure")
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q does not say %q", stderr, tc.want)
			}
			if _, err := os.Stat(e.state); err == nil {
				t.Fatalf("state file %s was written", e.state)
			}
		})
	}
}

// TestStateFile: after an apply the state file is 0600 and holds no
// private key in the clear.
func TestStateFile(t *testing.T) {
	l := testLab.Get(t)
	e := appliedEnv(t, l)
	fi, err := os.Stat(e.state)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %o, want 600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(e.state)
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Fatal("state file holds a private key in the clear")
	}
	out, stderr, code := e.run(t, "status", "-o", "json")
	if code != 0 {
		t.Fatal(stderr)
	}
	if strings.Contains(out, "PRIVATE KEY") || !strings.Contains(out, `"gatewayAddress"`) {
		t.Fatalf("status -o json: %s", out)
	}
	exportDir := filepath.Join(e.dir, "export")
	if _, stderr, code := e.run(t, "ca", "export", "--cluster", "east", exportDir); code != 0 {
		t.Fatal(stderr)
	}
	for _, f := range pki.CACertsFiles {
		if _, err := os.Stat(filepath.Join(exportDir, f)); err != nil {
			t.Fatalf("ca export: %v", err)
		}
	}
	if _, stderr, code := e.run(t, "check"); code != 0 {
		t.Fatalf("check after apply: %s", stderr)
	}
}

// TestRender: apply --render writes one YAML file per cluster and touches
// neither the clusters nor the state.
func TestRender(t *testing.T) {
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
		for _, want := range []string{"kind: Istio", "istio-eastwestgateway", "cross-network-gateway", "network: network"} {
			if !strings.Contains(string(data), want) {
				t.Errorf("%s.yaml lacks %q", c, want)
			}
		}
		if strings.Contains(string(data), "PRIVATE KEY") || strings.Contains(string(data), "kind: Secret") {
			t.Errorf("%s.yaml carries a secret", c)
		}
	}
	if _, err := os.Stat(e.state); err == nil {
		t.Fatal("render wrote a state")
	}
}

// TestHubMode runs `flotilla server` on the applied state and drives it with
// `flotilla --hub`: status and check answer over the API; a wrong token is
// refused.
func TestHubMode(t *testing.T) {
	l := testLab.Get(t)
	e := appliedEnv(t, l)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	token, ca := filepath.Join(e.dir, "hub.token"), filepath.Join(e.dir, "hub-ca.pem")
	srv := e.cmd("server", "--listen", addr, "--token-file", token, "--tls-ca-out", ca, "--interval", "0")
	var srvLog bytes.Buffer
	srv.Stderr = &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}()
	url := "https://" + addr
	hub := func(args ...string) (string, string, int) {
		return e.run(t, append([]string{"--hub", url, "--hub-token-file", token, "--hub-ca", ca}, args...)...)
	}
	deadline := time.Now().Add(30 * time.Second)
	var out, stderr string
	var code int
	for {
		out, stderr, code = hub("status", "-o", "json")
		if code == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if code != 0 {
		t.Fatalf("status through the hub: %s\nserver log: %s", stderr, srvLog.String())
	}
	if !strings.Contains(out, `"name": "east"`) || !strings.Contains(out, `"name": "west"`) {
		t.Fatalf("status through the hub lacks the clusters: %s", out)
	}
	if out, stderr, code := hub("check"); code != 0 {
		t.Fatalf("check through the hub: %s\n%s", stderr, out)
	}
	bad := filepath.Join(e.dir, "bad.token")
	os.WriteFile(bad, []byte("not-the-token-of-this-hub\n"), 0o600)
	_, stderr, code = e.run(t, "--hub", url, "--hub-token-file", bad, "--hub-ca", ca, "status")
	if code == 0 || !strings.Contains(strings.ToLower(stderr), "unauthorized") && !strings.Contains(stderr, "401") {
		t.Fatalf("wrong token: exit %d, stderr %q", code, stderr)
	}
}

// TestOfflineRoot runs the CSR flow: the root key never reaches flotilla;
// apply stops at the missing intermediates, ca csr emits one CSR per
// cluster, the root's holder signs them, ca accept takes them back (refusing
// one signed for another cluster's key), and apply then converges.
func TestOfflineRoot(t *testing.T) {
	l := testLab.Get(t)
	resetClusters(t, l)
	e := keyedEnv(t)
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(e.dir, "root-cert.pem")
	os.WriteFile(rootFile, root.CertPEM, 0o644)
	mesh := filepath.Join(e.dir, "mesh.yaml")
	os.WriteFile(mesh, []byte(fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256, offline: true, root: {certFile: %s}}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, rootFile, l.Kubeconfig, l.Kubeconfig)), 0o600)

	_, stderr, code := e.run(t, "apply", "-f", mesh)
	if code == 0 || !strings.Contains(stderr, "flotilla ca csr") {
		t.Fatalf("apply before the intermediates are signed: exit %d, stderr %q", code, stderr)
	}
	csrDir := filepath.Join(e.dir, "csr")
	if _, stderr, code := e.run(t, "ca", "csr", "-f", mesh, csrDir); code != 0 {
		t.Fatal(stderr)
	}
	signed := map[string]string{}
	for _, c := range []string{"east", "west"} {
		csr, err := os.ReadFile(filepath.Join(csrDir, c+".csr.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cert, err := root.SignIntermediateCSR(csr, "istio-system", 24*time.Hour*365)
		if err != nil {
			t.Fatalf("%s: the root's holder signs: %v", c, err)
		}
		signed[c] = filepath.Join(e.dir, c+".pem")
		os.WriteFile(signed[c], cert, 0o644)
	}
	if _, stderr, code := e.run(t, "ca", "accept", "-f", mesh, "--cluster", "east", signed["west"]); code == 0 {
		t.Fatal("ca accept took west's intermediate for east")
	} else if !strings.Contains(stderr, "east") {
		t.Fatalf("refusal does not name the cluster: %q", stderr)
	}
	for _, c := range []string{"east", "west"} {
		if _, stderr, code := e.run(t, "ca", "accept", "-f", mesh, "--cluster", c, signed[c]); code != 0 {
			t.Fatalf("%s: ca accept: %s", c, stderr)
		}
	}
	if _, stderr, code := e.run(t, "apply", "-f", mesh); code != 0 {
		t.Fatalf("apply after accepting: %s", stderr)
	}
	assertConverged(t, l, e)
	out, _, _ := e.run(t, "ca", "show", "-o", "json")
	if !strings.Contains(out, pki.Fingerprint(root.Cert)) || !strings.Contains(out, `"rootKeyStored": false`) {
		t.Fatalf("ca show: the offline root is not the mesh root, or its key is stored: %s", out)
	}
}

// TestRotateIntermediate: ca rotate issues a new intermediate under the same
// root and replaces the cluster's cacerts.
func TestRotateIntermediate(t *testing.T) {
	l := testLab.Get(t)
	e := appliedEnv(t, l)
	kc, err := l.Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := pki.ReadCACerts(context.Background(), kc, "istio-system")
	if _, stderr, code := e.run(t, "ca", "rotate", "intermediate", "east"); code != 0 {
		t.Fatal(stderr)
	}
	after, _ := pki.ReadCACerts(context.Background(), kc, "istio-system")
	if string(before.CACerts.CACert) == string(after.CACerts.CACert) {
		t.Fatal("east's cacerts holds the same intermediate after rotation")
	}
	if string(before.CACerts.RootCert) != string(after.CACerts.RootCert) {
		t.Fatal("rotation changed the root")
	}
	assertConverged(t, l, e)
}
