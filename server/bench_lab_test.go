package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestLabBenchmark compares flotilla's apply of a two-cluster multi-primary,
// multi-network mesh from an empty state with the seed procedure (openssl and
// kubectl, as Istio's multicluster guides do it) on the same lab clusters,
// each in namespaces of its own, and measures a no-op re-apply and the write
// calls it makes. It is a benchmark, not a test: FLOTILLA_BENCH=1 runs it
// (FLOTILLA_BENCH_N iterations, default 3; FLOTILLA_BENCH_ALG, default
// RSA-4096, the key algorithm of both). scenarios/bench/run.sh drives it.
func TestLabBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "1" {
		t.Skip("benchmark: set FLOTILLA_BENCH=1")
	}
	iterations := 3
	if v := os.Getenv("FLOTILLA_BENCH_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FLOTILLA_BENCH_N=%q: want a positive integer", v)
		}
		iterations = n
	}
	alg := "RSA-4096"
	if v := os.Getenv("FLOTILLA_BENCH_ALG"); v != "" {
		alg = v
	}
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tag := strconv.FormatInt(time.Now().Unix()%100000, 10)

	var applies, seeds, noops []time.Duration
	var writes map[string]int
	var reads int
	for i := range iterations {
		resetSail(ctx, t, l)
		counter := &requestCounter{n: map[string]int{}}
		h := newHub(t)
		h.Progress = nil
		h.Connect = counter.connect
		m := benchMesh(t, l, alg, fmt.Sprintf("bf%s-%d", tag, i))

		start := time.Now()
		rep, err := h.Apply(ctx, m, ApplyOptions{})
		if err != nil || rep.Err() != nil {
			t.Fatalf("flotilla apply: %v %v", err, rep.Err())
		}
		applies = append(applies, time.Since(start))

		counter.reset()
		start = time.Now()
		rep, err = h.Apply(ctx, m, ApplyOptions{})
		if err != nil || rep.Err() != nil {
			t.Fatalf("no-op apply: %v %v", err, rep.Err())
		}
		noops = append(noops, time.Since(start))
		writes = counter.writes()
		reads = counter.total() - sum(writes)
		if n := rep.Changes(); n != 0 {
			t.Errorf("no-op apply counted %d changes, want 0", n)
		}

		// The plan right after an apply has nothing to do.
		rep, err = h.Apply(ctx, m, ApplyOptions{DryRun: true})
		if err != nil || rep.Err() != nil {
			t.Fatalf("plan: %v %v", err, rep.Err())
		}
		for _, s := range rep.Steps {
			if s.Step == "control plane" && s.Action != "none" {
				t.Errorf("plan after apply: %s: %s (%s), want none", s.Cluster, s.Action, s.Detail)
			}
		}

		resetSail(ctx, t, l)
		d, steps := seed(ctx, t, l, alg, fmt.Sprintf("bs%s-%d", tag, i))
		seeds = append(seeds, d)
		t.Logf("bench: iteration %d: flotilla %v, seed %v (%s), no-op re-apply %v",
			i+1, applies[i].Round(time.Millisecond), d.Round(time.Millisecond), steps, noops[i].Round(time.Millisecond))
	}
	resetSail(ctx, t, l)

	fa, fs, fn := median(applies), median(seeds), median(noops)
	t.Logf("bench: %d iteration(s), key algorithm %s, medians:", iterations, alg)
	t.Logf("bench: flotilla apply (empty state, 2 clusters): %v", fa.Round(time.Millisecond))
	t.Logf("bench: seed procedure (openssl + kubectl):      %v", fs.Round(time.Millisecond))
	t.Logf("bench: ratio flotilla/seed:                     %.2f", float64(fa)/float64(fs))
	t.Logf("bench: no-op re-apply:                          %v", fn.Round(time.Millisecond))
	total := 0
	keys := make([]string, 0, len(writes))
	for k, n := range writes {
		keys = append(keys, k)
		total += n
	}
	sort.Strings(keys)
	t.Logf("bench: no-op re-apply write calls (last iteration): %d (reads: %d)", total, reads)
	for _, k := range keys {
		t.Logf("bench:   %4d %s", writes[k], k)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchMesh is labMesh in control-plane namespace ns.
func benchMesh(t testing.TB, l *lab.Lab, alg, ns string) *spec.Mesh {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  controlPlaneNamespace: %s
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: %s}
  clusters:
  - {name: east, context: east, network: network1, kubeconfig: %s}
  - {name: west, context: west, network: network2, kubeconfig: %s}
`, ns, alg, l.Kubeconfig, l.Kubeconfig)
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// resetSail deletes the cluster-scoped Sail resources: their spec.namespace
// is immutable, and each run uses namespaces of its own.
func resetSail(ctx context.Context, t testing.TB, l *lab.Lab) {
	t.Helper()
	for _, lc := range l.Clusters() {
		c, err := lc.Connect()
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"Istio", "IstioCNI"} {
			gvr, _, err := c.Resource(ctx, schema.GroupVersionKind{Group: "sailoperator.io", Version: "v1", Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Dynamic.Resource(gvr).Delete(ctx, deploy.IstioName, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatalf("%s: delete %s %s: %v", c.Name, kind, deploy.IstioName, err)
			}
		}
	}
}

// requestCounter counts the requests flotilla's connections make, by
// cluster, verb and resource.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (rc *requestCounter) connect(c spec.Cluster, kubeconfig string) (*kube.Cluster, error) {
	return connectWrapped(c, kubeconfig, func(rt http.RoundTripper) http.RoundTripper {
		return countingTransport{rt: rt, rc: rc, cluster: c.Name}
	})
}

// connectWrapped connects to c as the hub does, through wrap's transport.
func connectWrapped(c spec.Cluster, kubeconfig string, wrap func(http.RoundTripper) http.RoundTripper) (*kube.Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.KubeconfigFor(kubeconfig)
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.Context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: kubeconfig: %w", c.Name, err)
	}
	cfg.Wrap(wrap)
	return kube.Connect(c.Name, cfg)
}

func (rc *requestCounter) reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.n = map[string]int{}
}

// total is the number of counted requests.
func (rc *requestCounter) total() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, v := range rc.n {
		n += v
	}
	return n
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// writes are the counted requests other than get, list and watch.
func (rc *requestCounter) writes() map[string]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]int{}
	for k, n := range rc.n {
		verb := strings.Fields(k)[1]
		if verb != "get" && verb != "list" && verb != "watch" {
			out[k] = n
		}
	}
	return out
}

type countingTransport struct {
	rt      http.RoundTripper
	rc      *requestCounter
	cluster string
}

func (ct countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resource, named := resourceOf(r.URL.Path)
	verb := map[string]string{http.MethodPost: "create", http.MethodPut: "update", http.MethodDelete: "delete", http.MethodPatch: "patch"}[r.Method]
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		verb = "watch"
	case r.Method == http.MethodGet && named:
		verb = "get"
	case r.Method == http.MethodGet:
		verb = "list"
	case r.Method == http.MethodPatch && strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch"):
		verb = "apply"
	}
	if r.URL.Query().Get("dryRun") != "" {
		verb += "(dry-run)"
	}
	ct.rc.mu.Lock()
	ct.rc.n[ct.cluster+" "+verb+" "+resource]++
	ct.rc.mu.Unlock()
	return ct.rt.RoundTrip(r)
}

// resourceOf names the resource of an API path (/api/v1/namespaces/x/secrets/y
// is secrets, named) and whether the path names one object.
func resourceOf(path string) (string, bool) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		segs = segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		segs = segs[3:]
	default:
		return path, false // discovery and the like
	}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		segs = segs[2:]
	}
	switch len(segs) {
	case 0:
		return "namespaces", false
	case 1:
		return segs[0], false
	case 2:
		return segs[0], true
	default:
		return segs[0] + "/" + segs[2], true
	}
}

// seed performs the seed procedure against the lab in namespace ns, the way
// Istio's "plug in CA certificates" and "install multi-primary on different
// networks" guides do it, one command after the other: a root and an
// intermediate per cluster with openssl (Istio's tools/certs extensions),
// cacerts with kubectl create secret, the gateway, the cross-network Gateway
// and the Istio resource with kubectl apply (YAML rendered beforehand, not
// timed), the reader account with its ClusterRole and binding, a token with
// kubectl create token, a remote secret per direction, and the wait for each
// gateway's address. It returns the time taken and a breakdown by step.
func seed(ctx context.Context, t *testing.T, l *lab.Lab, alg, ns string) (time.Duration, string) {
	t.Helper()
	dir := t.TempDir()
	names := []string{"east", "west"}
	m := benchMesh(t, l, alg, ns)

	// Preparation, not timed: the YAML a person would have at hand.
	mp, err := compile(m)
	if err != nil {
		t.Fatal(err)
	}
	opts := mp.Deploy
	opts.AllowPendingAddress = true
	plans, err := gateways.Plan(mp.Layout, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gateways.Render(dir, plans); err != nil {
		t.Fatal(err)
	}
	reader := readerYAML(t, ns)
	readerFile := filepath.Join(dir, "reader.yaml")
	write(t, readerFile, reader)
	write(t, filepath.Join(dir, "root-ca.conf"), []byte(rootConf))
	for _, n := range names {
		if err := os.MkdirAll(filepath.Join(dir, n), 0o700); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, n, "ca.conf"), []byte(fmt.Sprintf(intermediateConf, ns, ns, n)))
	}

	var steps []string
	mark := time.Now()
	lap := func(name string) {
		steps = append(steps, fmt.Sprintf("%s %v", name, time.Since(mark).Round(time.Millisecond)))
		mark = time.Now()
	}
	run := func(name string, args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
		}
		return out
	}
	kubectl := func(cluster string, args ...string) []byte {
		t.Helper()
		return run(l.Bin("kubectl"), append([]string{"--kubeconfig", l.Kubeconfig, "--context", cluster}, args...)...)
	}
	keyArgs := []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"}
	switch alg {
	case "RSA-2048":
		keyArgs = []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"}
	case "ECDSA-P256":
		keyArgs = []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"}
	}

	start := time.Now()
	run("openssl", append([]string{"genpkey", "-out", "root-key.pem"}, keyArgs...)...)
	run("openssl", "req", "-x509", "-new", "-sha256", "-days", "3650", "-key", "root-key.pem",
		"-config", "root-ca.conf", "-extensions", "req_ext", "-out", "root-cert.pem")
	lap("root")
	for _, n := range names {
		run("openssl", append([]string{"genpkey", "-out", n + "/ca-key.pem"}, keyArgs...)...)
		run("openssl", "req", "-new", "-sha256", "-config", n+"/ca.conf", "-key", n+"/ca-key.pem", "-out", n+"/cluster-ca.csr")
		run("openssl", "x509", "-req", "-sha256", "-days", "730", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
			"-extensions", "req_ext", "-extfile", n+"/ca.conf", "-in", n+"/cluster-ca.csr", "-out", n+"/ca-cert.pem")
		chain := append(read(t, filepath.Join(dir, n, "ca-cert.pem")), read(t, filepath.Join(dir, "root-cert.pem"))...)
		write(t, filepath.Join(dir, n, "cert-chain.pem"), chain)
		if err := os.WriteFile(filepath.Join(dir, n, "root-cert.pem"), read(t, filepath.Join(dir, "root-cert.pem")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lap("intermediates")
	for _, n := range names {
		kubectl(n, "apply", "--server-side", "--field-manager=seed", "-f", n+".yaml")
	}
	lap("namespaces+gateways+istio")
	for _, n := range names {
		kubectl(n, "create", "secret", "generic", "cacerts", "-n", ns,
			"--from-file="+n+"/ca-cert.pem", "--from-file="+n+"/ca-key.pem",
			"--from-file="+n+"/root-cert.pem", "--from-file="+n+"/cert-chain.pem")
	}
	lap("cacerts")
	tokens := map[string]string{}
	for _, n := range names {
		kubectl(n, "apply", "-f", "reader.yaml")
		tokens[n] = strings.TrimSpace(string(kubectl(n, "create", "token", federation.ReaderServiceAccount, "-n", ns, "--duration", "8760h")))
	}
	lap("readers+tokens")
	for _, reader := range names {
		for _, target := range names {
			if target == reader {
				continue
			}
			f := filepath.Join(dir, "remote-"+target+"-in-"+reader+".yaml")
			write(t, f, remoteSecretYAML(t, l.Cluster(target), ns, tokens[target]))
			kubectl(reader, "apply", "-f", f)
		}
	}
	lap("remote secrets")
	for _, n := range names {
		kubectl(n, "wait", "-n", ns, "service/"+gateways.EastWestName, "--for=jsonpath={.status.loadBalancer.ingress}", "--timeout=2m")
	}
	lap("gateway addresses")
	return time.Since(start), strings.Join(steps, ", ")
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// rootConf and intermediateConf are Istio's tools/certs configurations.
const rootConf = `[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
[ req_dn ]
O = Istio
CN = Root CA
`

const intermediateConf = `[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName=@san
[ san ]
URI.1 = spiffe://cluster.local/ns/%s/sa/citadel
DNS.1 = istiod.%s.svc
[ req_dn ]
O = Istio
CN = Intermediate CA
L = %s
`

// readerYAML is the reader account, its ClusterRole (Istio's
// istio-reader-clusterrole rules) and the binding, as one YAML stream.
func readerYAML(t *testing.T, ns string) []byte {
	t.Helper()
	role := federation.ReaderClusterRoleName(ns)
	objs := []any{
		corev1ac.ServiceAccount(federation.ReaderServiceAccount, ns),
		rbacv1ac.ClusterRole(role).WithRules(federation.ReaderRules(false)...),
		rbacv1ac.ClusterRoleBinding(role).
			WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(role)).
			WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(federation.ReaderServiceAccount).WithNamespace(ns)),
	}
	var b bytes.Buffer
	for _, o := range objs {
		data, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(data)
	}
	return b.Bytes()
}

// remoteSecretYAML is what istioctl create-remote-secret prints for target:
// a kubeconfig with the reader's token, labelled for istiod.
func remoteSecretYAML(t *testing.T, target *lab.Cluster, ns, token string) []byte {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[target.Name] = &clientcmdapi.Cluster{Server: target.Server, CertificateAuthorityData: target.CAData}
	cfg.AuthInfos[target.Name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[target.Name] = &clientcmdapi.Context{Cluster: target.Name, AuthInfo: target.Name}
	cfg.CurrentContext = target.Name
	kc, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	sec := corev1ac.Secret("istio-remote-secret-"+target.Name, ns).
		WithLabels(map[string]string{"istio/multiCluster": "true"}).
		WithAnnotations(map[string]string{"networking.istio.io/cluster": target.Name}).
		WithStringData(map[string]string{target.Name: string(kc)})
	data, err := yaml.Marshal(sec)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
