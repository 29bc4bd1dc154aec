package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server/spec"
)

// trioMesh is a multi-primary spec over the named clusters of trioLab, one
// network each.
func trioMesh(t *testing.T, l *lab.Lab, names ...string) *spec.Mesh {
	t.Helper()
	doc := `apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: trio}
spec:
  topology: multi-primary
  allowLoopbackAPIServers: true
  pki: {keyAlgorithm: ECDSA-P256}
  clusters:
`
	for i, n := range names {
		doc += fmt.Sprintf("  - {name: %s, context: %s, network: network%d, kubeconfig: %s}\n", n, n, i+1, l.Kubeconfig)
	}
	m, err := spec.Parse("mesh.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// remoteSecretToken is the bearer token in reader's remote secret for target.
func remoteSecretTokenOf(t *testing.T, ctx context.Context, reader *kube.Cluster, target string) string {
	t.Helper()
	sec, err := reader.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-remote-secret-"+target, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: remote secret for %s: %v", reader.Name, target, err)
	}
	cfg, err := clientcmd.Load(sec.Data[target])
	if err != nil {
		t.Fatal(err)
	}
	ai := cfg.AuthInfos[target]
	if ai == nil || ai.Token == "" {
		t.Fatalf("%s: remote secret for %s carries no token", reader.Name, target)
	}
	return ai.Token
}

// TestRemovalRetiresHeldTokensLab: centre leaves a mesh of three; the
// reader tokens of north and south that centre held (in its remote
// secrets, so in its admin's hands) are replaced in the same apply: north
// and south read each other with new tokens at once, the old ones keep
// working through the grace (no remaining reader loses access before its
// new secret is written) and are refused by TokenReview after it. Then
// south leaves too: north is read by nobody, and the token south held for
// it is refused at once, without a grace.
func TestRemovalRetiresHeldTokensLab(t *testing.T) {
	l := trioLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := newHub(t)
	h.SupersededGrace = 3 * time.Second
	kcs := map[string]*kube.Cluster{}
	for _, n := range []string{"north", "south", "centre"} {
		kc, err := l.Cluster(n).Connect()
		if err != nil {
			t.Fatal(err)
		}
		kcs[n] = kc
	}
	acct := federation.Account{Namespace: "istio-system", Name: federation.ReaderServiceAccount}
	apply := func(m *spec.Mesh, o ApplyOptions) *ApplyReport {
		t.Helper()
		rep, err := h.Apply(ctx, m, o)
		if err == nil {
			err = rep.Err()
		}
		if err != nil {
			t.Fatalf("apply %d cluster(s): %v", len(m.Spec.Clusters), err)
		}
		return rep
	}
	accepted := func(cluster, token string) bool {
		t.Helper()
		ok, err := federation.Accepted(ctx, kcs[cluster], acct, token)
		if err != nil {
			t.Fatalf("%s: TokenReview: %v", cluster, err)
		}
		return ok
	}
	// refused polls TokenReview: the API server caches an authentication
	// for ten seconds.
	refused := func(cluster, token string) (time.Duration, bool) {
		start := time.Now()
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			return !accepted(cluster, token), nil
		})
		return time.Since(start).Round(10 * time.Millisecond), err == nil
	}
	steps := func(rep *ApplyReport, cluster, step, action string) []Step {
		var out []Step
		for _, s := range rep.Steps {
			if s.Cluster == cluster && strings.HasPrefix(s.Step, step) && s.Action == action {
				out = append(out, s)
			}
		}
		return out
	}

	apply(trioMesh(t, l, "north", "south", "centre"), ApplyOptions{})
	held := map[string]string{}
	for _, target := range []string{"north", "south"} {
		held[target] = remoteSecretTokenOf(t, ctx, kcs["centre"], target)
		if !accepted(target, held[target]) {
			t.Fatalf("%s: the token centre holds is refused before the removal", target)
		}
	}
	if got := remoteSecretTokenOf(t, ctx, kcs["south"], "north"); got != held["north"] {
		t.Fatal("south and centre read north with different tokens: the test's premise (one token per reader) does not hold")
	}

	pair := trioMesh(t, l, "north", "south")
	t.Run("centre leaves: held tokens re-issued, old ones kept through the grace", func(t *testing.T) {
		rep := apply(pair, ApplyOptions{})
		if got := steps(rep, "centre", "remove from mesh", "removed"); len(got) != 1 {
			t.Fatalf("centre not removed: %+v", rep.Steps)
		}
		ret := steps(rep, "centre", "tokens it held", "retired")
		if len(ret) != 1 || !strings.Contains(ret[0].Detail, "north, south") {
			t.Fatalf("no retirement of the tokens centre held naming north and south: %+v", ret)
		}
		t.Logf("centre: %s", ret[0].Detail)
		for reader, target := range map[string]string{"north": "south", "south": "north"} {
			if got := steps(rep, target, "reader ", "token issued"); len(got) != 1 || !strings.HasPrefix(got[0].Detail, string(federation.ReasonMissing)) {
				t.Errorf("%s: reader token not re-issued in the removal's apply: %+v", target, got)
			}
			if got := steps(rep, reader, "secret istio-system/istio-remote-secret-"+target, "updated"); len(got) != 1 {
				t.Errorf("%s: its secret reading %s was not rewritten: %+v", reader, target, got)
			}
			now := remoteSecretTokenOf(t, ctx, kcs[reader], target)
			if now == held[target] {
				t.Errorf("%s still reads %s with the token centre held", reader, target)
			}
			if !accepted(target, now) {
				t.Errorf("%s: the new token %s reads it with is refused", target, reader)
			}
			if !accepted(target, held[target]) {
				t.Errorf("%s: the replaced token is refused inside the grace", target)
			}
		}
		if got := steps(rep, "", "reader ", "revoked"); len(got) != 0 {
			t.Errorf("revoked inside the grace: %+v", got)
		}
	})

	t.Run("after the grace: the tokens centre held are refused", func(t *testing.T) {
		time.Sleep(h.SupersededGrace + time.Second)
		rep := apply(pair, ApplyOptions{Source: "reconcile"})
		for _, target := range []string{"north", "south"} {
			if got := steps(rep, target, "reader ", "revoked"); len(got) == 0 {
				t.Errorf("%s: the replaced token was not revoked after the grace: %+v", target, rep.Steps)
			}
			d, ok := refused(target, held[target])
			if !ok {
				t.Errorf("%s: TokenReview still accepts the token centre held, 30s after its revocation", target)
				continue
			}
			t.Logf("%s: the token centre held is refused %s after the apply", target, d)
		}
		for reader, target := range map[string]string{"north": "south", "south": "north"} {
			if tok := remoteSecretTokenOf(t, ctx, kcs[reader], target); !accepted(target, tok) {
				t.Errorf("%s: its remote secret for %s holds a refused token", reader, target)
			}
		}
		if n := apply(pair, ApplyOptions{}).Changes(); n != 0 {
			t.Errorf("an apply after the removal changed %d thing(s)", n)
		}
	})

	t.Run("south leaves: nobody reads north, the token south held is refused at once", func(t *testing.T) {
		southHeld := remoteSecretTokenOf(t, ctx, kcs["south"], "north")
		rep := apply(trioMesh(t, l, "north"), ApplyOptions{})
		ret := steps(rep, "south", "tokens it held", "retired")
		if len(ret) != 1 || !strings.Contains(ret[0].Detail, "revoked (north:") {
			t.Fatalf("the token south held for north is not revoked: %+v", ret)
		}
		t.Logf("south: %s", ret[0].Detail)
		d, ok := refused("north", southHeld)
		if !ok {
			t.Fatal("TokenReview still accepts the token south held for north 30s after the apply")
		}
		t.Logf("north: the token south held is refused %s after the apply (no grace: nobody else reads north)", d)
	})
}

// TestReadsOf: which of the clusters a leaving one read get a new token
// (another cluster still reads them) and which only lose theirs.
func TestReadsOf(t *testing.T) {
	l := &lab.Lab{Kubeconfig: "/dev/null"}
	for _, tc := range []struct {
		name       string
		was, now   []string
		leaving    string
		reissue    []string
		orphaned   []string
		alsoLeaves []string
	}{
		{"one of three leaves", []string{"north", "south", "centre"}, []string{"north", "south"}, "centre", []string{"north", "south"}, nil, nil},
		{"one of two leaves", []string{"north", "south"}, []string{"north"}, "south", nil, []string{"north"}, nil},
		{"two of three leave", []string{"north", "south", "centre"}, []string{"north"}, "centre", nil, []string{"north"}, []string{"south"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			was, err := compile(trioMesh(t, l, tc.was...))
			if err != nil {
				t.Fatal(err)
			}
			now, err := compile(trioMesh(t, l, tc.now...))
			if err != nil {
				t.Fatal(err)
			}
			leaving := map[string]spec.Cluster{tc.leaving: {Name: tc.leaving}}
			for _, n := range tc.alsoLeaves {
				leaving[n] = spec.Cluster{Name: n}
			}
			got := readsOf(was, now, tc.leaving, leaving)
			if fmt.Sprint(got.Reissue) != fmt.Sprint(tc.reissue) {
				t.Errorf("re-issued %v, want %v", got.Reissue, tc.reissue)
			}
			var orphaned []string
			for _, n := range []string{"north", "south", "centre"} {
				if accts, ok := got.Orphaned[n]; ok {
					orphaned = append(orphaned, n)
					if len(accts) != 1 || accts[0].Name != federation.ReaderServiceAccount {
						t.Errorf("%s: accounts %v, want the reader", n, accts)
					}
				}
			}
			if fmt.Sprint(orphaned) != fmt.Sprint(tc.orphaned) {
				t.Errorf("orphaned %v, want %v", orphaned, tc.orphaned)
			}
		})
	}
}
