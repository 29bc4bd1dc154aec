package federation

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestLabRotateBoundTokens rotates west's reader credential the way the hub
// does, against real API servers: the new token, bound to a Secret of its
// own, is in east's remote secret while the old one still works; revoking
// the superseded token (deleting its binding) makes a real request with it
// 401 and leaves the new one reading; a binding deleted by someone else is
// caught as a rejected credential.
func TestLabRotateBoundTokens(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "rotate-system", AllowLoopback: true}
	m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
	res := mustReconcile(t, ctx, m, nil, o)
	westKube, err := testLab.Get(t).Cluster("west").Connect()
	if err != nil {
		t.Fatal(err)
	}
	acct := Account{Namespace: o.Namespace, Name: ReaderServiceAccount}
	west := func(r *Result) (Credential, LinkResult) {
		t.Helper()
		var c Credential
		var l LinkResult
		for _, x := range r.Credentials {
			if x.Cluster == "west" {
				c = x
			}
		}
		for _, x := range r.Links {
			if x.Reader == "east" && x.Target == "west" {
				l = x
			}
		}
		if c.Token == "" || l.Secret == "" {
			t.Fatalf("no credential or east->west link for west: %+v", r.Links)
		}
		return c, l
	}
	first, _ := west(res)
	if first.Binding == "" {
		t.Fatalf("west's credential is bound to no secret: %v", first)
	}
	if d := time.Until(first.Expiry); d > DefaultTokenLifetime+time.Minute || d < DefaultTokenLifetime-time.Hour {
		t.Errorf("default token expires in %v, want about %v", d.Round(time.Minute), DefaultTokenLifetime)
	}

	steps := []struct {
		name string
		run  func(t *testing.T, prev Credential) Credential
	}{
		{"rotation on demand: new token written, then the old one revoked", func(t *testing.T, prev Credential) Credential {
			ro := o
			ro.Token.Rotate = map[string]bool{"west": true}
			r := mustReconcile(t, ctx, m, []Credential{prev}, ro)
			cur, link := west(r)
			if cur.Token == prev.Token || cur.Binding == prev.Binding || link.Action != Updated {
				t.Fatalf("rotation: token replaced %v, binding %s -> %s, east's secret %s; want a new token in an updated secret",
					cur.Token != prev.Token, prev.Binding, cur.Binding, link.Action)
			}
			// Make-before-break: both work until the old one is revoked.
			for _, tok := range []string{prev.Token, cur.Token} {
				if ok, err := Accepted(ctx, westKube, acct, tok); err != nil || !ok {
					t.Fatalf("before revocation a token is refused (%v, %v)", ok, err)
				}
			}
			// A grace the new token has not served yet revokes nothing.
			if rv, err := RevokeSuperseded(ctx, westKube, acct, cur, time.Hour, time.Now(), nil); err != nil || len(rv) != 0 {
				t.Fatalf("revocation inside the grace: %v, %v; want nothing", rv, err)
			}
			// A reader not switched yet holds it.
			held := false
			if rv, err := RevokeSuperseded(ctx, westKube, acct, cur, 0, time.Now(), func(context.Context) bool { held = true; return true }); err != nil || len(rv) != 0 || !held {
				t.Fatalf("revocation held by a reader: %v, %v (asked %v); want nothing", rv, err, held)
			}
			rv, err := RevokeSuperseded(ctx, westKube, acct, cur, 0, time.Now(), nil)
			if err != nil || len(rv) != 1 || rv[0].Binding != prev.Binding {
				t.Fatalf("revoked %+v (%v), want exactly the binding %s", rv, err, prev.Binding)
			}
			eventuallyRefused(t, ctx, westKube, acct, prev.Token)
			if code := requestWith(ctx, westKube.Config, prev.Token); code != 401 {
				t.Errorf("a request with the revoked token: %d, want 401", code)
			}
			if code := requestWith(ctx, westKube.Config, cur.Token); code != 200 {
				t.Errorf("a request with the new token: %d, want 200", code)
			}
			assertReads(t, ctx, link, false)
			return cur
		}},
		{"binding deleted by someone: renewed as rejected", func(t *testing.T, prev Credential) Credential {
			if err := admin(t, "west").CoreV1().Secrets(o.Namespace).Delete(ctx, prev.Binding, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			r := mustReconcile(t, ctx, m, []Credential{prev}, o)
			for _, tr := range r.Targets {
				if tr.Cluster == "west" && tr.Renewed != ReasonRejected {
					t.Errorf("west renewed %q, want %q", tr.Renewed, ReasonRejected)
				}
			}
			cur, link := west(r)
			assertReads(t, ctx, link, false)
			return cur
		}},
		{"a second pass writes nothing and revokes nothing", func(t *testing.T, prev Credential) Credential {
			r := mustReconcile(t, ctx, m, []Credential{prev}, o)
			cur, link := west(r)
			if cur.Token != prev.Token || link.Action != Unchanged {
				t.Errorf("second pass: token kept %v, east's secret %s; want kept and unchanged", cur.Token == prev.Token, link.Action)
			}
			if rv, err := RevokeSuperseded(ctx, westKube, acct, cur, 0, time.Now(), nil); err != nil || len(rv) != 0 {
				t.Errorf("revoked %+v (%v), want nothing: no token superseded", rv, err)
			}
			return cur
		}},
	}
	cur := first
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) { cur = st.run(t, cur) })
	}
}

// requestWith lists namespaces on cfg's server with token alone and returns
// the HTTP status (200, or the API error's code).
func requestWith(ctx context.Context, cfg *rest.Config, token string) int {
	c := rest.AnonymousClientConfig(cfg)
	c.BearerToken = token
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return -1
	}
	_, err = cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err == nil {
		return 200
	}
	if s, ok := err.(apierrors.APIStatus); ok {
		return int(s.Status().Code)
	}
	return -1
}

// TestLabRevokeAll: every token of a reader flotilla minted (two bound
// ones, beside each other as during a rotation, and a legacy one) is
// refused once RevokeAll ran; a Secret of the account's binding label that
// flotilla did not make stays.
func TestLabRevokeAll(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "revokeall-system", AllowLoopback: true}
	m := labMesh(t, MultiPrimary, Member{Name: "east"}, Member{Name: "west"})
	res := mustReconcile(t, ctx, m, nil, o)
	westKube, err := testLab.Get(t).Cluster("west").Connect()
	if err != nil {
		t.Fatal(err)
	}
	acct := Account{Namespace: o.Namespace, Name: ReaderServiceAccount}
	var tokens []string
	var prev []Credential
	for _, c := range res.Credentials {
		if c.Cluster == "west" {
			tokens, prev = append(tokens, c.Token), []Credential{c}
		}
	}
	ro := o
	ro.Token.Rotate = map[string]bool{"west": true}
	for _, c := range mustReconcile(t, ctx, m, prev, ro).Credentials {
		if c.Cluster == "west" {
			tokens = append(tokens, c.Token)
		}
	}
	legacy, err := legacyToken(ctx, westKube, acct, false, TokenOptions{Legacy: true})
	if err != nil {
		t.Fatal(err)
	}
	tokens = append(tokens, legacy.Token)
	if len(tokens) != 3 || tokens[0] == tokens[1] {
		t.Fatalf("want two bound tokens and a legacy one, got %d", len(tokens))
	}
	foreign, err := westKube.Kube.CoreV1().Secrets(o.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: "not-flotillas", Namespace: o.Namespace, Labels: map[string]string{TokenBindingLabel: acct.Name},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, tok := range tokens {
		if ok, err := Accepted(ctx, westKube, acct, tok); err != nil || !ok {
			t.Fatalf("token %d refused before RevokeAll (%v)", i, err)
		}
	}
	rv, err := RevokeAll(ctx, westKube, acct)
	if err != nil {
		t.Fatal(err)
	}
	if len(rv) != 3 {
		t.Errorf("RevokeAll deleted %d secrets, want 3 (two bindings and the legacy token's): %+v", len(rv), rv)
	}
	for i, tok := range tokens {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			ok, err := Accepted(ctx, westKube, acct, tok)
			return err == nil && !ok, nil
		})
		if err != nil {
			t.Errorf("token %d still accepted 30s after RevokeAll", i)
		}
	}
	if _, err := westKube.Kube.CoreV1().Secrets(o.Namespace).Get(ctx, foreign.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("a secret flotilla did not make was deleted: %v", err)
	}
}
