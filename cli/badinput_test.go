package cli_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/cli"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// corpus is the bad-input corpus's shared ground: a state with a spec, a
// root and a pending CSR for east; an empty state; a key; a kubeconfig whose
// API servers are never contacted; and the files the cases name.
type corpus struct {
	dir, state, empty, key, kubeconfig string
	root                               *pki.Root
}

func (c corpus) path(name string) string { return filepath.Join(c.dir, name) }

func (c corpus) write(t *testing.T, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := c.path(name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

const corpusKubeconfig = `apiVersion: v1
kind: Config
clusters:
- {name: east, cluster: {server: "https://127.0.0.1:1"}}
- {name: west, cluster: {server: "https://127.0.0.1:2"}}
- {name: bare, cluster: {}}
- {name: loose, cluster: {server: "https://127.0.0.1:3", insecure-skip-tls-verify: true}}
users:
- {name: admin, user: {token: not-a-real-token}}
contexts:
- {name: east, context: {cluster: east, user: admin}}
- {name: west, context: {cluster: west, user: admin}}
- {name: bare, context: {cluster: bare, user: admin}}
- {name: loose, context: {cluster: loose, user: admin}}
`

// specDoc is a mesh spec: the header, then spec lines.
func specDoc(lines ...string) []byte {
	return []byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: mesh1\nspec:\n" + strings.Join(lines, "\n") + "\n")
}

func newCorpus(t *testing.T) corpus {
	t.Helper()
	d := t.TempDir()
	c := corpus{dir: d, state: filepath.Join(d, "state.db"), empty: filepath.Join(d, "empty.db"), key: filepath.Join(d, "state.key")}
	k, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := state.WriteKeyFile(c.key, k); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = c.write(t, "kubeconfig", []byte(corpusKubeconfig), 0o600)
	if c.root, err = pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse("mesh.yaml", c.good())
	if err != nil {
		t.Fatal(err)
	}
	req, err := pki.NewIntermediateRequest("east", "istio-system", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := state.Open(ctx, c.state, state.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, func(tx *state.Tx) error {
		if err := tx.PutSpec(m.Canonical(), m.Hash()); err != nil {
			return err
		}
		if err := tx.InitCA(state.CA{RootCertPEM: c.root.CertPEM, Source: state.CAGenerated, UpdatedAt: time.Now()}, c.root.Key.Reveal()); err != nil {
			return err
		}
		return tx.PutIntermediateCSR("east", req.CSRPEM, req.Key.Reveal())
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, err = state.Open(ctx, c.empty, state.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	return c
}

// good is a valid spec over the corpus kubeconfig.
func (c corpus) good(extra ...string) []byte {
	return specDoc(append([]string{
		"  topology: multi-primary",
		"  allowLoopbackAPIServers: true",
		"  pki: {keyAlgorithm: ECDSA-P256}",
		"  clusters:",
		"  - {name: east, context: east, network: n1, kubeconfig: " + c.kubeconfig + "}",
		"  - {name: west, context: west, network: n2, kubeconfig: " + c.kubeconfig + "}",
	}, extra...)...)
}

// withRoot is a valid spec importing the root in the given files.
func (c corpus) withRoot(certFile, keyFile string) []byte {
	root := "{certFile: " + certFile + "}, offline: true"
	if keyFile != "" {
		root = "{certFile: " + certFile + ", keyFile: " + keyFile + "}"
	}
	return specDoc(
		"  topology: multi-primary",
		"  allowLoopbackAPIServers: true",
		"  pki: {keyAlgorithm: ECDSA-P256, root: "+root+"}",
		"  clusters:",
		"  - {name: east, context: east, network: n1, kubeconfig: "+c.kubeconfig+"}",
	)
}

// certPEM makes a certificate with tmpl's profile, self-signed or signed by
// parent (with its key).
func certPEM(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey any) ([]byte, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	if parent == nil {
		parent, parentKey = tmpl, k
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &k.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

type badCase struct {
	name string
	// state is the state file the command runs on: c.state unless set.
	state string
	args  []string
	env   map[string]string
	// want are substrings of the error: each names the field, file or object.
	want []string
}

// run executes flotilla in process and returns its error.
func runFlotilla(ctx context.Context, args []string) error {
	root := cli.NewRoot(cli.BuildInfo{})
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// TestBadInputCorpus feeds flotilla broken and hostile input: spec files,
// flags, kubeconfigs, PEM files, CSRs, keys and tokens. Each case fails with
// an error that names the field, file or object at fault, and no state file
// changes by a single byte. (The API's requests are in the server package's
// TestBadAPIRequests; the csr-agent's CSRs in csragent's TestBadCSRs.)
func TestBadInputCorpus(t *testing.T) {
	c := newCorpus(t)
	for _, name := range []string{"FLOTILLA_STATE", "FLOTILLA_STATE_KEY", "FLOTILLA_STATE_KEY_FILE", "FLOTILLA_HUB", "FLOTILLA_HUB_TOKEN", "FLOTILLA_KUBECONFIG"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	specFile := func(name string, data []byte) string { return c.write(t, name, data, 0o600) }
	mp := "  topology: multi-primary"
	east := "  - {name: east, context: east, network: n1, kubeconfig: " + c.kubeconfig + "}"
	west := "  - {name: west, context: west, network: n2, kubeconfig: " + c.kubeconfig + "}"
	two := []string{"  allowLoopbackAPIServers: true", "  clusters:", east, west}
	with := func(lines ...string) []byte { return specDoc(append(append([]string{mp}, lines...), two...)...) }
	plan := func(name string, data []byte, want ...string) badCase {
		f := specFile(strings.ReplaceAll(name, " ", "-")+".yaml", data)
		return badCase{name: "spec: " + name, args: []string{"plan", "-f", f}, want: append([]string{filepath.Base(f)}, want...)}
	}
	planIn := func(name string, data []byte, want ...string) badCase {
		f := specFile(strings.ReplaceAll(name, " ", "-")+".yaml", data)
		return badCase{name: "kubeconfig: " + name, args: []string{"plan", "-f", f}, want: want}
	}
	rootCase := func(name string, cert, key []byte, want ...string) badCase {
		cf := c.write(t, strings.ReplaceAll(name, " ", "-")+"-cert.pem", cert, 0o600)
		kf := ""
		if key != nil {
			kf = c.write(t, strings.ReplaceAll(name, " ", "-")+"-key.pem", key, 0o600)
		}
		f := specFile(strings.ReplaceAll(name, " ", "-")+"-root.yaml", c.withRoot(cf, kf))
		return badCase{name: "pem: " + name, state: c.empty, args: []string{"apply", "-f", f}, want: want}
	}
	accept := func(name string, data []byte, cluster string, want ...string) badCase {
		f := c.write(t, strings.ReplaceAll(name, " ", "-")+".pem", data, 0o600)
		return badCase{name: "accept: " + name, args: []string{"ca", "accept", "--cluster", cluster, f}, want: want}
	}

	// Certificates for the PEM and CSR cases.
	now := time.Now()
	leaf, leafKey := certPEM(t, &x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}, nil, nil)
	expired, expiredKey := certPEM(t, &x509.Certificate{Subject: pkix.Name{Organization: []string{"Istio"}, CommonName: "Root CA"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	other, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	otherReq, err := pki.NewIntermediateRequest("east", "istio-system", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signedByOther, err := other.SignIntermediateCSR(otherReq.CSRPEM, "istio-system", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongKeySigned, err := c.root.SignIntermediateCSR(otherReq.CSRPEM, "istio-system", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	notPEM := []byte("this is not PEM at all\n")
	truncated := c.root.CertPEM[:len(c.root.CertPEM)/2]
	corrupt := bytes.Replace(c.root.CertPEM, []byte("MII"), []byte("XXX"), 1)
	keyAsCert := c.root.Key.Reveal()

	loosePerm := c.write(t, "loose.key", []byte(mustKey(t)), 0o644)
	notB64 := c.write(t, "notb64.key", []byte("%%% not base64 %%%\n"), 0o600)
	short := c.write(t, "short.key", []byte("c2hvcnQ=\n"), 0o600)
	otherKey := c.write(t, "other.key", []byte(mustKey(t)), 0o600)
	tokLoose := c.write(t, "token-loose", []byte("0123456789abcdef0123\n"), 0o644)
	tokEmpty := c.write(t, "token-empty", nil, 0o600)
	tokGood := c.write(t, "token-good", []byte("0123456789abcdef0123\n"), 0o600)
	garbageCA := c.write(t, "garbage-ca.pem", notPEM, 0o600)
	badConfig := c.write(t, "config.yaml", []byte("state: [unclosed\n"), 0o600)
	aFile := c.write(t, "a-file", []byte("x"), 0o600)
	existingKey := c.write(t, "existing.key", []byte(mustKey(t)), 0o600)
	kcDir := filepath.Join(c.dir, "kubeconfig-dir")
	os.Mkdir(kcDir, 0o700)
	kcGarbage := c.write(t, "kubeconfig-garbage", []byte("clusters: {{{\n"), 0o600)

	cases := []badCase{
		// Spec files: decoding.
		plan("empty", nil, "empty document"),
		plan("comments only", []byte("# one day\n"), "empty document"),
		plan("two documents", append(c.good(), "---\nkind: Mesh\n"...), "second YAML document"),
		plan("invalid yaml", []byte("apiVersion: [unclosed\n"), "invalid YAML"),
		plan("binary", []byte{0xff, 0xfe, 0x00, 0x01, 0x02}, "invalid YAML"),
		plan("top level list", []byte("- a\n- b\n"), "expected a mapping"),
		plan("top level scalar", []byte("mesh\n"), "expected a mapping"),
		plan("unknown top field", []byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspecs: {}\n"), `unknown field "specs"`),
		plan("unknown cluster field", specDoc(mp, "  clusters:", "  - {name: east, context: east, netwrk: n1}"), "spec.clusters[0].netwrk"),
		plan("unknown spec field", with("  colour: blue"), "spec.colour"),
		plan("field twice", with("  topology: primary-remote"), "spec.topology: field given twice"),
		plan("nodePort not a number", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, gateway: {serviceType: NodePort, nodePort: abc}}"), "spec.clusters[0].gateway.nodePort"),
		plan("clusters a mapping", specDoc(mp, "  clusters: {name: east}"), "spec.clusters: expected a list"),
		plan("bool a string", with(`  federation: {}`, `  allowLoopbackAPIServers: "yes"`), "spec.allowLoopbackAPIServers"),
		plan("network a number", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: 1}"), "spec.clusters[0].network"),
		plan("pki a string", with("  pki: builtin"), "spec.pki: expected a mapping"),
		plan("alias bomb", []byte("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"), "line"),
		// Spec files: validation.
		plan("wrong apiVersion", bytes.Replace(c.good(), []byte("flotilla.dev/v1alpha1"), []byte("v1"), 1), "apiVersion"),
		plan("wrong kind", bytes.Replace(c.good(), []byte("kind: Mesh"), []byte("kind: Cluster"), 1), "kind"),
		plan("no metadata name", bytes.Replace(c.good(), []byte("  name: mesh1\n"), nil, 1), "metadata.name"),
		plan("mesh name not a label", bytes.Replace(c.good(), []byte("name: mesh1"), []byte("name: my_mesh"), 1), "metadata.name", "my_mesh"),
		plan("cluster name not a label", specDoc(mp, "  clusters:", "  - {name: East, context: east, network: n1}"), "spec.clusters[0].name", "East"),
		plan("duplicate cluster", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: east, context: west, network: n2}"), "spec.clusters[1].name"),
		plan("missing context", specDoc(mp, "  clusters:", "  - {name: east, network: n1}"), "spec.clusters[0].context: required"),
		plan("shared context", specDoc(mp, "  clusters:", "  - {name: east, context: lab, network: n1}", "  - {name: west, context: lab, network: n2}"), "spec.clusters[1].context"),
		plan("missing network", specDoc(mp, "  clusters:", "  - {name: east, context: east}"), "spec.clusters[0].network: required"),
		plan("network not a label", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: Net 1}"), "spec.clusters[0].network"),
		plan("missing topology", specDoc(two...), "spec.topology: required"),
		plan("unknown topology", specDoc(append([]string{"  topology: star"}, two...)...), "spec.topology", "star"),
		plan("ambient primary-remote", specDoc("  topology: primary-remote", "  dataplaneMode: ambient", "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"),
			"spec.topology", "does not support dataplaneMode ambient", "Istio 1.30"),
		plan("sidecar and ambient mixed", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, dataplaneMode: ambient}"),
			"spec.clusters[1].dataplaneMode", "mixing the two is not supported as of Istio 1.30"),
		plan("unknown dataplane mode", specDoc(mp, "  dataplaneMode: proxyless", "  clusters:", "  - {name: east, context: east, network: n1}"), "spec.dataplaneMode", "proxyless"),
		plan("role not in topology", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"), "spec.clusters[1].role"),
		plan("unknown role", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, role: leader}"), "spec.clusters[0].role", "leader"),
		plan("remote without primary", specDoc("  topology: primary-remote", "  clusters:", "  - {name: east, context: east, network: n1, role: remote}"), "spec.clusters", "primary"),
		plan("controlPlane names nobody", specDoc("  topology: primary-remote", "  clusters:", "  - {name: east, context: east, network: n1}", "  - {name: edge, context: edge, network: n3, role: remote, controlPlane: nowhere}"), "spec.clusters[1].controlPlane", "nowhere"),
		plan("no clusters", specDoc(mp), "spec.clusters: at least one cluster"),
		plan("empty cluster list", specDoc(mp, "  clusters: []"), "spec.clusters"),
		plan("bad pki mode", with("  pki: {mode: vault}"), "spec.pki.mode", "vault"),
		plan("bad key algorithm", with("  pki: {keyAlgorithm: RSA-1024}"), "spec.pki.keyAlgorithm", "RSA-1024"),
		plan("garbage duration", with("  pki: {rootTTL: 10y}"), "spec.pki.rootTTL", "10y"),
		plan("zero duration", with("  pki: {intermediateTTL: 0s}"), "spec.pki.intermediateTTL"),
		plan("negative token ttl", with("  federation: {tokenTTL: -1h}"), "spec.federation.tokenTTL"),
		plan("intermediate outlives root", with("  pki: {rootTTL: 8760h, intermediateTTL: 17520h}"), "spec.pki.intermediateTTL"),
		plan("token ttl below minimum", with("  federation: {tokenTTL: 1m}"), "spec.federation.tokenTTL"),
		plan("apiServer http", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'http://10.0.0.1:6443'}"), "spec.clusters[0].apiServer", "https://"),
		plan("apiServer not a url", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://exa mple.com'}"), "spec.clusters[0].apiServer"),
		plan("apiServer without host", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://:6443'}"), "spec.clusters[0].apiServer", "no host"),
		plan("apiServer with credentials", specDoc(mp, "  clusters:", "  - {name: east, context: east, network: n1, apiServer: 'https://admin:pw@api.example.com'}"), "spec.clusters[0].apiServer"),
		// Kubeconfigs a spec names.
		planIn("missing kubeconfig", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: east, network: n1, kubeconfig: "+c.path("nope.kubeconfig")+"}"), "spec.clusters[0].kubeconfig", "nope.kubeconfig"),
		planIn("kubeconfig not yaml", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: east, network: n1, kubeconfig: "+kcGarbage+"}"), "spec.clusters[0].context", "kubeconfig-garbage"),
		planIn("kubeconfig a directory", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: east, network: n1, kubeconfig: "+kcDir+"}"), "spec.clusters[0]", "kubeconfig-dir"),
		planIn("context not in kubeconfig", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: nowhere, network: n1, kubeconfig: "+c.kubeconfig+"}"), "spec.clusters[0].context", `"nowhere" not found`),
		planIn("context without server", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: bare, network: n1, kubeconfig: "+c.kubeconfig+"}"), "spec.clusters[0].context", "no server"),
		planIn("loopback server read by others", specDoc(mp, "  clusters:", east, west), "spec.clusters[0].apiServer", "loopback"),
		planIn("insecure-skip-tls-verify", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: loose, network: n1, kubeconfig: "+c.kubeconfig+"}"), "east", `context "loose"`, "insecure-skip-tls-verify"),
		planIn("insecure on apply too", specDoc(mp, "  allowLoopbackAPIServers: true", "  clusters:", "  - {name: east, context: loose, network: n1, kubeconfig: "+c.kubeconfig+"}"), "east", "insecure-skip-tls-verify"),
		planIn("root cert file missing", specDoc(mp, "  allowLoopbackAPIServers: true", "  pki: {offline: true, root: {certFile: "+c.path("no-root.pem")+"}}", "  clusters:", east), "spec.pki.root.certFile", "no-root.pem"),
		planIn("root key file missing", specDoc(mp, "  allowLoopbackAPIServers: true", "  pki: {root: {certFile: "+c.kubeconfig+", keyFile: "+c.path("no-key.pem")+"}}", "  clusters:", east), "spec.pki.root.keyFile", "no-key.pem"),
		// PEM files of a root to import, on a state without one.
		rootCase("cert not pem", notPEM, nil, "spec.pki.root.certFile", "no PEM certificate"),
		rootCase("cert truncated", truncated, nil, "spec.pki.root.certFile"),
		rootCase("cert corrupt", corrupt, nil, "spec.pki.root.certFile"),
		rootCase("cert is a key", keyAsCert, nil, "spec.pki.root.certFile", "PRIVATE KEY"),
		rootCase("cert not a CA", leaf, nil, "spec.pki.root.certFile"),
		rootCase("cert expired", expired, nil, "spec.pki.root.certFile"),
		rootCase("key not pem", c.root.CertPEM, notPEM, "spec.pki.root", "keyFile"),
		rootCase("key of another cert", c.root.CertPEM, leafKey, "spec.pki.root", "keyFile"),
		rootCase("key is a cert", c.root.CertPEM, c.root.CertPEM, "spec.pki.root", "keyFile"),
		rootCase("expired with its key", expired, expiredKey, "spec.pki.root"),
		// Signed intermediates and CSRs handed back for an offline root.
		accept("not pem", notPEM, "east", "east", "accept intermediate"),
		accept("a csr instead", otherReq.CSRPEM, "east", "east", "CERTIFICATE REQUEST"),
		accept("new csr block", bytes.ReplaceAll(otherReq.CSRPEM, []byte("CERTIFICATE REQUEST"), []byte("NEW CERTIFICATE REQUEST")), "east", "east", "NEW CERTIFICATE REQUEST"),
		accept("signed by another root", signedByOther, "east", "east"),
		accept("signed for another key", wrongKeySigned, "east", "east", "not for this cluster's CSR"),
		accept("the root itself", c.root.CertPEM, "east", "east"),
		accept("a leaf", leaf, "east", "east"),
		accept("cluster not in mesh", wrongKeySigned, "nowhere", `"nowhere"`),
		accept("cluster without pending csr", wrongKeySigned, "west", "west", "no pending CSR"),
		{name: "accept: missing file", args: []string{"ca", "accept", "--cluster", "east", c.path("missing.pem")}, want: []string{"missing.pem"}},
		// State keys.
		{name: "key: file others can read", args: []string{"--state-key-file", loosePerm, "ca", "show"}, want: []string{loosePerm, "chmod 600"}},
		{name: "key: file not base64", args: []string{"--state-key-file", notB64, "ca", "show"}, want: []string{notB64, "not base64"}},
		{name: "key: file too short", args: []string{"--state-key-file", short, "ca", "show"}, want: []string{short, "want 32"}},
		{name: "key: file missing", args: []string{"--state-key-file", c.path("no.key"), "ca", "show"}, want: []string{"no.key"}},
		{name: "key: env not base64", args: []string{"--state-key-file", "", "ca", "show"}, env: map[string]string{"FLOTILLA_STATE_KEY": "%%%"}, want: []string{"FLOTILLA_STATE_KEY", "not base64"}},
		{name: "key: env too short", args: []string{"--state-key-file", "", "ca", "show"}, env: map[string]string{"FLOTILLA_STATE_KEY": "c2hvcnQ="}, want: []string{"FLOTILLA_STATE_KEY", "want 32"}},
		{name: "key: another key's state", args: []string{"--state-key-file", otherKey, "ca", "export", "--cluster", "east", c.path("export")}, want: []string{"state"}},
		{name: "key: none for apply", args: []string{"--state-key-file", "", "apply", "-f", specFile("good.yaml", c.good())}, want: []string{"no state key"}},
		// Hub tokens.
		{name: "token: file others can read", args: []string{"--hub", "https://127.0.0.1:1", "--hub-token-file", tokLoose, "status"}, want: []string{tokLoose, "chmod 600"}},
		{name: "token: empty file", args: []string{"--hub", "https://127.0.0.1:1", "--hub-token-file", tokEmpty, "status"}, want: []string{tokEmpty, "empty"}},
		{name: "token: missing file", args: []string{"--hub", "https://127.0.0.1:1", "--hub-token-file", c.path("no-token"), "status"}, want: []string{"no-token"}},
		{name: "token: none at all", args: []string{"--hub", "https://127.0.0.1:1", "status"}, want: []string{"FLOTILLA_HUB_TOKEN"}},
		{name: "token: hub CA not PEM", args: []string{"--hub", "https://127.0.0.1:1", "--hub-token-file", tokGood, "--hub-ca", garbageCA, "status"}, want: []string{"garbage-ca.pem"}},
		{name: "token: server token file others can read", args: []string{"server", "--listen", "127.0.0.1:0", "--token-file", tokLoose}, want: []string{tokLoose, "chmod 600"}},
		{name: "token: server token too short", args: []string{"server", "--listen", "127.0.0.1:0"}, env: map[string]string{"FLOTILLA_HUB_TOKEN": "short"}, want: []string{"at least 16", "FLOTILLA_HUB_TOKEN"}},
		// Flags and arguments.
		{name: "flags: apply without -f", args: []string{"apply"}, want: []string{"-f mesh.yaml is required"}},
		{name: "flags: plan without -f", args: []string{"plan"}, want: []string{"-f mesh.yaml is required"}},
		{name: "flags: unknown command", args: []string{"frobnicate"}, want: []string{`unknown command "frobnicate"`}},
		{name: "flags: unknown flag", args: []string{"apply", "--frob"}, want: []string{"unknown flag: --frob"}},
		{name: "flags: adopt and replace", args: []string{"apply", "-f", specFile("good.yaml", c.good()), "--adopt-cacerts", "--replace-cacerts"}, want: []string{"--adopt-cacerts", "--replace-cacerts"}},
		{name: "flags: status output", args: []string{"status", "-o", "xml"}, want: []string{`"xml"`}},
		{name: "flags: plan output", args: []string{"plan", "-f", specFile("good.yaml", c.good()), "-o", "yaml"}, want: []string{`"yaml"`}},
		{name: "flags: version output", args: []string{"version", "-o", "xml"}, want: []string{"xml"}},
		{name: "flags: ca export without cluster", args: []string{"ca", "export", c.path("x")}, want: []string{"--cluster is required"}},
		{name: "flags: ca export unknown cluster", args: []string{"ca", "export", "--cluster", "nowhere", c.path("x")}, want: []string{"nowhere"}},
		{name: "flags: ca rotate without name", args: []string{"ca", "rotate", "intermediate"}, want: []string{"ca rotate intermediate NAME"}},
		{name: "flags: ca rotate what", args: []string{"ca", "rotate", "everything"}, want: []string{"everything"}},
		{name: "flags: server interval", args: []string{"server", "--interval", "soon"}, want: []string{"interval", "soon"}},
		{name: "flags: server log level", args: []string{"server", "--log-level", "loud", "--token-file", tokGood}, want: []string{"--log-level"}},
		{name: "flags: server grace period", args: []string{"server", "--grace-period", "-x"}, want: []string{"grace-period"}},
		{name: "flags: csr-agent without cluster", args: []string{"csr-agent"}, want: []string{"--cluster-name"}},
		{name: "flags: csr-agent garbage bundle", args: []string{"csr-agent", "--cluster-name", "east", "--trust-bundle-file", garbageCA}, want: []string{"trust bundle"}},
		{name: "flags: keygen without out", args: []string{"state", "keygen"}, want: []string{"--out FILE is required"}},
		{name: "flags: keygen over a key", args: []string{"state", "keygen", "--out", existingKey}, want: []string{existingKey, "not overwriting"}},
		{name: "flags: render onto a file", args: []string{"apply", "-f", specFile("good.yaml", c.good()), "--render", aFile}, want: []string{"a-file"}},
		{name: "flags: config file missing", args: []string{"--config", c.path("no-config.yaml"), "version"}, want: []string{"config file", "no-config.yaml"}},
		{name: "flags: config file garbage", args: []string{"--config", badConfig, "version"}, want: []string{"config file", "config.yaml"}},
		{name: "flags: spec is a directory", args: []string{"plan", "-f", c.dir}, want: []string{"read mesh spec", filepath.Base(c.dir)}},
		{name: "flags: spec missing", args: []string{"apply", "-f", c.path("nope.yaml")}, want: []string{"nope.yaml"}},
		{name: "flags: extra argument", args: []string{"status", "extra"}, want: []string{"extra"}},
	}

	states := []string{c.state, c.empty}
	before := map[string][]byte{}
	for _, s := range states {
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		before[s] = data
	}
	passed := 0
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			st := tc.state
			if st == "" {
				st = c.state
			}
			args := append([]string{"--state", st, "--state-key-file", c.key}, tc.args...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err := runFlotilla(ctx, args)
			if err == nil {
				t.Fatalf("flotilla %s: no error", strings.Join(tc.args, " "))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			for _, s := range states {
				after, rerr := os.ReadFile(s)
				if rerr != nil || !bytes.Equal(after, before[s]) {
					t.Errorf("state %s changed (%v)", filepath.Base(s), rerr)
				}
			}
		})
		if ok {
			passed++
		}
	}
	t.Logf("bad-input corpus (CLI): %d of %d cases pass", passed, len(cases))
	if len(cases) < 100 {
		t.Errorf("the CLI corpus has %d cases", len(cases))
	}
}

func mustKey(t *testing.T) string {
	t.Helper()
	k, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Encode() + "\n"
}
