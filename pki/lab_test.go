package pki

import (
	"context"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewShared("east", "west")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

func labClusters(t *testing.T) (east, west *kube.Cluster) {
	t.Helper()
	l := testLab.Get(t)
	var err error
	if east, err = l.Cluster("east").Connect(); err != nil {
		t.Fatal(err)
	}
	if west, err = l.Cluster("west").Connect(); err != nil {
		t.Fatal(err)
	}
	return east, west
}

func getSecret(t *testing.T, c *kube.Cluster, ns string) *corev1.Secret {
	t.Helper()
	s, err := c.Kube.CoreV1().Secrets(ns).Get(context.Background(), SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: get secret %s/%s: %v", c.Name, ns, SecretName, err)
	}
	return s
}

// createForeign puts a cacerts in place the way the manual procedure does
// (kubectl create secret generic), without flotilla's label.
func createForeign(t *testing.T, c *kube.Cluster, ns string, cc CACerts, extra map[string][]byte) *corev1.Secret {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	data := cc.SecretData()
	maps.Copy(data, extra)
	s, err := c.Kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: ns},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}, metav1.CreateOptions{FieldManager: "kubectl-create"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func clusterCACerts(t *testing.T, root *Root, cluster, ns string) (*Intermediate, CACerts) {
	t.Helper()
	in, err := root.IssueIntermediate(cluster, ns, Config{KeyAlgorithm: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := NewCACerts(in, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	return in, cc
}

// TestLabWriteCACerts: east and west get the same root and their own
// intermediates; a second write changes nothing; a rotation updates.
func TestLabWriteCACerts(t *testing.T) {
	ctx := context.Background()
	east, west := labClusters(t)
	m := newMesh(t, RSA4096)
	const ns = "istio-system"
	want := map[*kube.Cluster]CACerts{east: m.eastCC, west: m.westCC}

	rvs := map[string]string{}
	for _, c := range []*kube.Cluster{east, west} {
		res, err := WriteCACerts(ctx, c, ns, want[c], Refuse)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != Created {
			t.Errorf("%s: action %s, want created", c.Name, res.Action)
		}
		s := getSecret(t, c, ns)
		if s.Type != corev1.SecretTypeOpaque || s.Labels[ManagedByLabel] != ManagedByValue {
			t.Errorf("%s: type %s labels %v, want Opaque managed by flotilla", c.Name, s.Type, s.Labels)
		}
		if keys := slices.Sorted(maps.Keys(s.Data)); !slices.Equal(keys, []string{CACertFile, CAKeyFile, CertChainFile, RootCertFile}) {
			t.Errorf("%s: keys %v, want the four cacerts keys", c.Name, keys)
		}
		if i := slices.IndexFunc(s.ManagedFields, func(f metav1.ManagedFieldsEntry) bool {
			return f.Manager == kube.ManagerPKI && f.Operation == metav1.ManagedFieldsOperationApply
		}); i < 0 {
			t.Errorf("%s: no server-side apply by %q in managedFields", c.Name, kube.ManagerPKI)
		}
		got, err := ReadCACerts(ctx, c, ns)
		if err != nil || got == nil {
			t.Fatalf("%s: ReadCACerts: %v, %v", c.Name, got, err)
		}
		if !got.Managed || !got.CACerts.Equal(want[c]) || got.ResourceVersion != s.ResourceVersion {
			t.Errorf("%s: read back managed=%v equal=%v rv=%s/%s", c.Name, got.Managed, got.CACerts.Equal(want[c]), got.ResourceVersion, s.ResourceVersion)
		}
		rvs[c.Name+"/secret"] = s.ResourceVersion
		nsObj, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: namespace %s was not created: %v", c.Name, ns, err)
		}
		rvs[c.Name+"/namespace"] = nsObj.ResourceVersion
	}

	// Same root, different intermediates, across the two clusters.
	e, _ := ReadCACerts(ctx, east, ns)
	w, _ := ReadCACerts(ctx, west, ns)
	if string(e.CACerts.RootCert) != string(w.CACerts.RootCert) {
		t.Errorf("east and west root-cert.pem differ")
	}
	if string(e.CACerts.CACert) == string(w.CACerts.CACert) || e.CACerts.CAKey.Equal(w.CACerts.CAKey) {
		t.Errorf("east and west share an intermediate")
	}
	trust, err := w.CACerts.Roots()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trust.VerifyChain(e.CACerts.CertChain, time.Now(), ""); err != nil {
		t.Errorf("east's cert-chain.pem does not verify to west's root-cert.pem: %v", err)
	}

	// A second run writes nothing.
	for _, c := range []*kube.Cluster{east, west} {
		res, err := WriteCACerts(ctx, c, ns, want[c], Refuse)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != Unchanged {
			t.Errorf("%s: second write: action %s, want unchanged", c.Name, res.Action)
		}
		if rv := getSecret(t, c, ns).ResourceVersion; rv != rvs[c.Name+"/secret"] {
			t.Errorf("%s: second write changed the secret's resourceVersion %s -> %s", c.Name, rvs[c.Name+"/secret"], rv)
		}
		nsObj, _ := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if nsObj.ResourceVersion != rvs[c.Name+"/namespace"] {
			t.Errorf("%s: second write changed the namespace's resourceVersion", c.Name)
		}
	}

	// Rotating east's intermediate updates east only, under the same root.
	in, cc, err := m.root.RotateIntermediate(m.east, Config{KeyAlgorithm: RSA4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := WriteCACerts(ctx, east, ns, cc, Refuse)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != Updated || res.ResourceVersion == rvs["east/secret"] {
		t.Errorf("rotation: action %s rv %s, want updated with a new resourceVersion", res.Action, res.ResourceVersion)
	}
	got, _ := ReadCACerts(ctx, east, ns)
	if string(got.CACerts.CACert) != string(in.CertPEM) {
		t.Errorf("east's cacerts does not hold the rotated intermediate")
	}
}

// TestLabForeignCACerts: a cacerts flotilla did not write stops the write
// with an error naming cluster and secret, and is left byte-identical,
// unless Replace or Adopt is asked for.
func TestLabForeignCACerts(t *testing.T) {
	ctx := context.Background()
	east, _ := labClusters(t)
	ours := newMesh(t, ECDSAP256)
	theirs := newMesh(t, ECDSAP256)

	t.Run("refuse", func(t *testing.T) {
		const ns = "pki-foreign"
		before := createForeign(t, east, ns, theirs.eastCC, nil)
		_, cc := clusterCACerts(t, ours.root, "east", ns)
		for _, policy := range []ConflictPolicy{Refuse, Adopt} {
			_, err := WriteCACerts(ctx, east, ns, cc, policy)
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("%s: err %v, want a conflict", policy, err)
			}
			prefix := "east: secret pki-foreign/cacerts was not written by flotilla (root fingerprint " + Fingerprint(theirs.root.Cert) + "): refusing to overwrite; "
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("%s: message %q, want it to start %q", policy, err, prefix)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("%s: message shows key material", policy)
			}
			after := getSecret(t, east, ns)
			if after.ResourceVersion != before.ResourceVersion || !maps.EqualFunc(after.Data, before.Data, func(a, b []byte) bool { return string(a) == string(b) }) ||
				len(after.Labels) != 0 {
				t.Errorf("%s: the foreign cacerts was modified", policy)
			}
		}
	})

	t.Run("other root", func(t *testing.T) {
		// Written by flotilla, but for another mesh: still never silently replaced.
		const ns = "pki-otherroot"
		_, theirCC := clusterCACerts(t, theirs.root, "east", ns)
		if _, err := WriteCACerts(ctx, east, ns, theirCC, Refuse); err != nil {
			t.Fatal(err)
		}
		before := getSecret(t, east, ns)
		_, cc := clusterCACerts(t, ours.root, "east", ns)
		_, err := WriteCACerts(ctx, east, ns, cc, Refuse)
		ce, ok := AsConflict(err)
		if !ok || !strings.HasPrefix(ce.Reason, "chains to another root") || ce.RootFingerprint != Fingerprint(theirs.root.Cert) ||
			!strings.HasPrefix(err.Error(), "east: secret pki-otherroot/cacerts chains to another root") {
			t.Fatalf("err %v, want a conflict naming the other root", err)
		}
		if getSecret(t, east, ns).ResourceVersion != before.ResourceVersion {
			t.Errorf("the other mesh's cacerts was modified")
		}
	})

	t.Run("replace", func(t *testing.T) {
		const ns = "pki-replace"
		// With an extra key, so that Replace must drop what it did not write.
		createForeign(t, east, ns, theirs.eastCC, map[string][]byte{"notes.txt": []byte("made by hand")})
		_, cc := clusterCACerts(t, ours.root, "east", ns)
		res, err := WriteCACerts(ctx, east, ns, cc, Replace)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != Replaced {
			t.Errorf("action %s, want replaced", res.Action)
		}
		got, err := ReadCACerts(ctx, east, ns)
		if err != nil {
			t.Fatal(err)
		}
		s := getSecret(t, east, ns)
		if !got.Managed || !got.CACerts.Equal(cc) || len(s.Data) != 4 {
			t.Errorf("after replace: managed=%v ours=%v keys=%d", got.Managed, got.CACerts.Equal(cc), len(s.Data))
		}
		res, err = WriteCACerts(ctx, east, ns, cc, Refuse)
		if err != nil || res.Action != Unchanged || res.ResourceVersion != s.ResourceVersion {
			t.Errorf("write after replace: %s, %v; want unchanged", res.Action, err)
		}
	})

	t.Run("adopt", func(t *testing.T) {
		const ns = "pki-adopt"
		// Made by hand from our root (the manual procedure, same root).
		handIn, handCC := clusterCACerts(t, ours.root, "east", ns)
		before := createForeign(t, east, ns, handCC, nil)
		_, offered := clusterCACerts(t, ours.root, "east", ns)
		res, err := WriteCACerts(ctx, east, ns, offered, Adopt)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != Adopted || res.Adopted == nil || !res.Adopted.Cert.Equal(handIn.Cert) || !res.Adopted.Key.Equal(handIn.Key) {
			t.Fatalf("action %s adopted %v, want the existing intermediate", res.Action, res.Adopted)
		}
		after := getSecret(t, east, ns)
		if !maps.EqualFunc(after.Data, before.Data, func(a, b []byte) bool { return string(a) == string(b) }) {
			t.Errorf("adopt changed the cacerts material")
		}
		if after.Labels[ManagedByLabel] != ManagedByValue {
			t.Errorf("adopted cacerts not labelled: %v", after.Labels)
		}
		// Recorded as the cluster's intermediate, the next write is a no-op.
		cc, err := NewCACerts(res.Adopted, ours.root, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err = WriteCACerts(ctx, east, ns, cc, Refuse)
		if err != nil || res.Action != Unchanged || res.ResourceVersion != after.ResourceVersion {
			t.Errorf("write after adopt: %s, %v; want unchanged", res.Action, err)
		}
	})
}

// TestLabDryRun: a dry run reports what it would do and persists nothing.
func TestLabDryRun(t *testing.T) {
	ctx := context.Background()
	east, _ := labClusters(t)
	east.DryRun = true
	m := newMesh(t, ECDSAP256)
	const ns = "pki-dryrun"
	_, cc := clusterCACerts(t, m.root, "east", ns)
	res, err := WriteCACerts(ctx, east, ns, cc, Refuse)
	if err != nil || res.Action != Created {
		t.Fatalf("dry run: %s, %v; want created", res.Action, err)
	}
	if _, err := east.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("dry run created namespace %s: %v", ns, err)
	}
	if got, err := ReadCACerts(ctx, east, ns); got != nil || err != nil {
		t.Errorf("dry run wrote cacerts: %v, %v", got, err)
	}
}
