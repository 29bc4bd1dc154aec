// Package e2e holds the end-to-end scenarios: per topology, lab clusters,
// flotilla apply, the data-plane emulator and flotilla verify, run as the
// binary a user runs.
//
// Every scenario runs against Istio itself (lab.Options.RealIstio): Istio's
// charts installed as the Sail Operator installs them, a real istiod per
// istiod pod, sidecars injected by istiod's webhook, and the emulator
// playing only Envoy and istio-agent, with
// certificates and endpoints from the istiods. The multi-primary ones over
// two networks share one lab (realLab), the primary-remote ones another
// (remoteLab) and the external control plane ones a third (externalLab),
// each scenario leaving its mesh working; the others start clusters of
// their own, so the tests run one after another.
//
//	go test ./scenarios/e2e -run TestMultiPrimaryMultiNetwork -v
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/flotillamesh/flotilla/scenarios/emulator"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// realLab is east and west running Istio itself, shared by the
// multi-primary scenarios over two networks (one mesh, one flotilla state
// kept with the lab). A scenario that breaks the mesh puts it back.
var realLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, RealIstio: true})

// remoteLab is east (primary) and west (its remote) for the primary-remote
// scenarios, and externalLab cp, east and west for the external control
// plane ones, each shared the same way. Their load-balancer addresses are
// lab addresses: Istio's remote profile puts the serving gateway's address
// in an EndpointSlice.
var (
	remoteLab   = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west"}, RealIstio: true, LabLoadBalancers: true})
	externalLab = lab.NewSharedWith(lab.Options{Clusters: []string{"cp", "east", "west"}, RealIstio: true, LabLoadBalancers: true})
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
	code := lab.RunShared(m, realLab, remoteLab, externalLab)
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
	em   *emulator.Emulator
	dir  string
	env  []string
	mesh string
	// pki is the spec's pki field; "" is the builtin CA.
	pki string
	// real: the lab runs Istio itself (lab.Options.RealIstio).
	real bool
	// primaries are the clusters of the last apply whose istiod serves
	// themselves (multi-primary: all; primary-remote: the primary).
	primaries []string
	// served are the clusters of the last apply that run no istiod of the
	// mesh: a primary's remotes, the data planes of an external control
	// plane; server is the cluster whose istiod serves them, in namespace
	// serverNS.
	served           []string
	server, serverNS string
}

// startShared joins realLab with an emulator of its own (playing Envoy
// against the real istiods) and the lab's flotilla state.
func startShared(t *testing.T) *scenario {
	t.Helper()
	return startSharedLab(t, realLab)
}

// startSharedLab is startShared on shared lab sl.
func startSharedLab(t *testing.T, sl *lab.Shared) *scenario {
	t.Helper()
	if testing.Short() {
		t.Skip("starts lab clusters")
	}
	l := sl.Get(t)
	return newScenario(t, l, filepath.Join(l.Dir, "e2e-state"), true)
}

// startReal starts the named clusters, running Istio itself, for this test
// alone, with the emulator for them.
func startReal(t *testing.T, certManager bool, names ...string) *scenario {
	t.Helper()
	return startLab(t, lab.Options{Clusters: names, CertManager: certManager, RealIstio: true})
}

func startLab(t *testing.T, o lab.Options) *scenario {
	t.Helper()
	if testing.Short() {
		t.Skip("starts lab clusters")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o.Log = testWriter{t}
	l, err := lab.Start(ctx, o)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() { l.Stop() })
	return newScenario(t, l, t.TempDir(), o.RealIstio)
}

// newScenario runs the emulator over l until the test ends and keeps the
// flotilla state in dir (made with its key on first use).
func newScenario(t *testing.T, l *lab.Lab, dir string, real bool) *scenario {
	t.Helper()
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
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &scenario{t: t, lab: l, em: em, dir: dir, real: real}
	s.env = append(os.Environ(), "KUBECONFIG="+l.Kubeconfig, "FLOTILLA_STATE="+filepath.Join(s.dir, "state.db"),
		"FLOTILLA_STATE_KEY_FILE="+filepath.Join(s.dir, "state.key"), "FLOTILLA_STATE_KEY=", "FLOTILLA_HUB=")
	if _, err := os.Stat(filepath.Join(s.dir, "state.key")); errors.Is(err, fs.ErrNotExist) {
		s.run("state", "keygen", "--out", filepath.Join(s.dir, "state.key"))
	}
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
	s.primaries, s.served, s.server, s.serverNS = nil, nil, "", ""
	for _, c := range clusters {
		m := clusterName.FindStringSubmatch(c)
		if m == nil {
			continue
		}
		role := "primary"
		if r := clusterRole.FindStringSubmatch(c); r != nil {
			role = r[1]
		}
		switch role {
		case "primary":
			s.primaries = append(s.primaries, m[1])
			s.server, s.serverNS = m[1], "istio-system"
		case "control-plane":
			s.server, s.serverNS = m[1], "external-istiod"
		default:
			s.served = append(s.served, m[1])
		}
	}
	s.waitIstio()
}

var (
	clusterName = regexp.MustCompile(`name: ([a-z0-9-]+)`)
	clusterRole = regexp.MustCompile(`role: ([a-z-]+)`)
)

// waitIstio waits, in a lab running Istio, until a verify can count on
// what a control plane just (re)started serves: in every primary a ready
// istiod that publishes the root of its cacerts, injector webhooks that
// trust it (the API server refuses pods until they do: failurePolicy
// Fail), a ready endpoint for them, and the other primaries synced through
// their remote secrets; and in every cluster, east-west gateway proxies
// that istiod configured.
func (s *scenario) waitIstio() {
	s.t.Helper()
	if !s.real {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, name := range s.primaries {
		c := s.lab.Cluster(name)
		var why string
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			why = istioNotReady(ctx, c, s.primaries)
			return why == "", nil
		})
		if err != nil {
			s.t.Fatalf("%s: Istio not ready: %s (logs in %s)", name, why, filepath.Dir(c.Log("sail-lab")))
		}
	}
	if len(s.served) > 0 {
		var why string
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			why = s.servedNotReady(ctx)
			return why == "", nil
		})
		if err != nil {
			s.t.Fatalf("%s serving %v: Istio not ready: %s (logs in %s)", s.server, s.served, why, filepath.Dir(s.lab.Cluster(s.server).Log("sail-lab")))
		}
	}
	var why string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		why = s.gatewaysNotReady(ctx)
		return why == "", nil
	})
	if err != nil {
		s.t.Fatalf("gateways: %s", why)
	}
}

// servedNotReady says what of the istiod serving clusters that run none
// (s.server's, in s.serverNS) is not ready yet, "" when all is: the istiod
// ready, every served cluster synced in its clusterz (a data plane it
// reads as its config cluster excepted: istio-kubeconfig, not a remote
// secret), and every served cluster's injector webhooks trusting the root
// of the serving cacerts, which the istiod patches in once it reads the
// cluster (the API server refuses pods until then: failurePolicy Fail).
func (s *scenario) servedNotReady(ctx context.Context) string {
	c := s.lab.Cluster(s.server)
	var istiods []lab.IstiodInfo
	for _, in := range c.Istiods() {
		if in.Namespace == s.serverNS {
			istiods = append(istiods, in)
		}
	}
	if len(istiods) == 0 {
		return "no istiod runs in " + s.serverNS
	}
	cc, err := c.Client().CoreV1().Secrets(s.serverNS).Get(ctx, "cacerts", metav1.GetOptions{})
	if err != nil {
		return "cacerts: " + err.Error()
	}
	root := bytes.TrimSpace(cc.Data["root-cert.pem"])
	for _, in := range istiods {
		if in.Ready.IsZero() {
			return "istiod " + in.Pod + " not ready"
		}
		var clusters []struct {
			ID         string `json:"id"`
			SyncStatus string `json:"syncStatus"`
		}
		if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
			return "istiod clusterz: " + err.Error()
		}
		status := map[string]string{}
		for _, cl := range clusters {
			status[cl.ID] = cl.SyncStatus
		}
		// An external istiod reads one data plane, its config cluster,
		// through istio-kubeconfig: that one may be missing.
		missing := 0
		if s.serverNS != "istio-system" {
			missing = 1
		}
		for _, r := range s.served {
			st, ok := status[r]
			if !ok && missing > 0 {
				missing--
				continue
			}
			if st != "synced" {
				return fmt.Sprintf("istiod %s has not synced %s: %+v", in.Pod, r, clusters)
			}
		}
	}
	for _, r := range s.served {
		hooks, err := s.lab.Cluster(r).Client().AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: "app=sidecar-injector"})
		if err != nil {
			return r + ": injector webhooks: " + err.Error()
		}
		if len(hooks.Items) == 0 {
			return r + ": no injector webhook"
		}
		for _, h := range hooks.Items {
			for _, w := range h.Webhooks {
				if !bytes.Contains(w.ClientConfig.CABundle, root) {
					return r + ": webhook " + h.Name + "/" + w.Name + " does not trust the serving cacerts' root yet"
				}
			}
		}
	}
	return ""
}

// istioNotReady says what of cluster c's control plane is not ready yet,
// "" when all is.
func istioNotReady(ctx context.Context, c *lab.Cluster, primaries []string) string {
	istiods := c.Istiods()
	if len(istiods) == 0 {
		return "no istiod runs"
	}
	for _, in := range istiods {
		if in.Ready.IsZero() {
			return "istiod " + in.Pod + " not ready"
		}
	}
	cs := c.Client()
	cc, err := cs.CoreV1().Secrets("istio-system").Get(ctx, "cacerts", metav1.GetOptions{})
	if err != nil {
		return "cacerts: " + err.Error()
	}
	root := bytes.TrimSpace(cc.Data["root-cert.pem"])
	cm, err := cs.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return "istio-ca-root-cert: " + err.Error()
	}
	if !bytes.Equal(bytes.TrimSpace([]byte(cm.Data["root-cert.pem"])), root) {
		return "istiod publishes a root other than cacerts' root-cert.pem"
	}
	hooks, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: "app=sidecar-injector"})
	if err != nil {
		return "injector webhooks: " + err.Error()
	}
	if len(hooks.Items) == 0 {
		return "no injector webhook"
	}
	for _, h := range hooks.Items {
		for _, w := range h.Webhooks {
			if !bytes.Contains(w.ClientConfig.CABundle, root) {
				return "webhook " + h.Name + "/" + w.Name + " does not trust cacerts' root yet"
			}
		}
	}
	sls, err := cs.DiscoveryV1().EndpointSlices("istio-system").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=istiod"})
	if err != nil {
		return "endpoints of istio-system/istiod: " + err.Error()
	}
	readyEndpoint := false
	for _, sl := range sls.Items {
		for _, ep := range sl.Endpoints {
			readyEndpoint = readyEndpoint || len(ep.Addresses) > 0 && (ep.Conditions.Ready == nil || *ep.Conditions.Ready)
		}
	}
	if !readyEndpoint {
		return "service istio-system/istiod has no ready endpoint"
	}
	var clusters []struct {
		ID         string `json:"id"`
		SyncStatus string `json:"syncStatus"`
	}
	for _, in := range istiods {
		if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
			return "istiod clusterz: " + err.Error()
		}
		synced := map[string]bool{}
		for _, cl := range clusters {
			synced[cl.ID] = cl.SyncStatus == "synced"
		}
		for _, p := range primaries {
			if p != c.Name && !synced[p] {
				return fmt.Sprintf("istiod %s has not synced %s: %+v", in.Pod, p, clusters)
			}
		}
	}
	return ""
}

// gatewaysNotReady says which cluster's gateway (east-west, or the
// ingress in front of an external istiod) has no proxy that istiod
// configured and that is connected to istiod (after a restart of istiod a
// proxy reconnects with backoff, missing pushes meanwhile), "" when every
// gateway has.
func (s *scenario) gatewaysNotReady(ctx context.Context) string {
	ready := map[string]bool{}
	for _, p := range s.em.Proxies() {
		if p.Ready && p.Connected {
			ready[p.Cluster+"/"+p.Namespace+"/"+p.Pod] = true
		}
	}
	for _, c := range s.lab.Clusters() {
		pods, err := c.Client().CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "istio in (eastwestgateway,ingressgateway)"})
		if err != nil {
			return c.Name + ": " + err.Error()
		}
		kinds := map[string]bool{}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				kinds[p.Namespace+"/"+p.Labels["istio"]] = kinds[p.Namespace+"/"+p.Labels["istio"]] || ready[c.Name+"/"+p.Namespace+"/"+p.Name]
			}
		}
		for k, ok := range kinds {
			if !ok {
				return c.Name + ": no " + k + " proxy configured by istiod yet"
			}
		}
	}
	return ""
}

// getJSON reads one of istiod's debug endpoints (its HTTP port, 8080).
func getJSON(ctx context.Context, addr, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, "8080")+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

// restartIstiod deletes the istiod pods of the clusters, as an operator
// restarts istiod, and waits for Istio to serve again (waitIstio).
func (s *scenario) restartIstiod(clusters ...string) {
	s.t.Helper()
	s.restartIstiodPods(clusters...)
	s.waitIstio()
}

// restartIstiodPods deletes the istiod pods of the clusters and waits for
// new ready ones, without waiting for what they serve.
func (s *scenario) restartIstiodPods(clusters ...string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, name := range clusters {
		c := s.lab.Cluster(name)
		old := map[string]bool{}
		for _, in := range c.Istiods() {
			old[in.Pod] = true
			if err := c.Client().CoreV1().Pods(in.Namespace).Delete(ctx, in.Pod, metav1.DeleteOptions{}); err != nil {
				s.t.Fatalf("%s: delete pod %s/%s: %v", name, in.Namespace, in.Pod, err)
			}
		}
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
			got := c.Istiods()
			for _, in := range got {
				if old[in.Pod] || in.Ready.IsZero() {
					return false, nil
				}
			}
			return len(got) > 0, nil
		})
		if err != nil {
			s.t.Fatalf("%s: no new ready istiod after deleting %v: %+v", name, old, c.Istiods())
		}
	}
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

// waitClusterGone waits until no istiod of cluster lists remote in its
// clusterz (its remote secret was removed).
func (s *scenario) waitClusterGone(cluster, remote string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var clusters []struct {
		ID string `json:"id"`
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, in := range s.lab.Cluster(cluster).Istiods() {
			clusters = nil
			if err := getJSON(ctx, in.Address, "/debug/clusterz", &clusters); err != nil {
				return false, nil
			}
			for _, c := range clusters {
				if c.ID == remote {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		s.t.Fatalf("%s: istiod still lists %s: %+v", cluster, remote, clusters)
	}
}

// removeSample deletes what a verify --keep left in every cluster and
// waits for it to go, so that the lab's next scenario starts without it.
func (s *scenario) removeSample() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range s.lab.Clusters() {
		cs := c.Client()
		if err := cs.CoreV1().Namespaces().Delete(ctx, "sample", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			s.t.Errorf("%s: delete namespace sample: %v", c.Name, err)
			continue
		}
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := cs.CoreV1().Namespaces().Get(ctx, "sample", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			s.t.Errorf("%s: namespace sample not gone: %v", c.Name, err)
		}
	}
}

// logNetworks logs the gateways that cluster's istiod knows (its
// networkz), once it knows none for network or after half a minute.
func (s *scenario) logNetworks(cluster, network string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var raw json.RawMessage
	for _, in := range s.lab.Cluster(cluster).Istiods() {
		_ = wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			if err := getJSON(ctx, in.Address, "/debug/networkz", &raw); err != nil {
				return false, nil
			}
			return !bytes.Contains(raw, []byte(network)), nil
		})
		s.t.Logf("%s: istiod %s networkz: %s", cluster, in.Pod, raw)
	}
}
