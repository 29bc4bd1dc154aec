package server

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestRotateReadersLab drives `flotilla federation rotate` through the
// hub's API against the lab's API servers: status lists each reader
// credential with its seven-day expiry and its renewal at half life; a
// rotation of one cluster replaces only that cluster's token, in the remote
// secret of the cluster that reads it, and the replaced token is refused by
// TokenReview; a rotation of all replaces both; a cluster outside the mesh
// is refused by name; the next apply leaves everything as the rotation did.
func TestRotateReadersLab(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "rot")
	if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("apply: %v %v", err, rep.Err())
	}
	c := startServer(t, h, 0).client(t, testToken)

	st, err := c.Status(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Credentials) != 2 {
		t.Fatalf("status credentials: %+v, want east's and west's", st.Credentials)
	}
	for _, cr := range st.Credentials {
		life := cr.ExpiresAt.Sub(cr.IssuedAt)
		if life < federation.DefaultTokenLifetime-time.Hour || life > federation.DefaultTokenLifetime+time.Hour {
			t.Errorf("%s: token lives %v, want about %v", cr.Cluster, life, federation.DefaultTokenLifetime)
		}
		if got := cr.ExpiresAt.Sub(cr.RenewAt); got != federation.DefaultTokenLifetime/2 {
			t.Errorf("%s: renewed %v before expiry, want %v", cr.Cluster, got, federation.DefaultTokenLifetime/2)
		}
		t.Logf("credential of %s held by %v: expires %s, renewed %s", cr.Cluster, cr.HeldBy, cr.ExpiresAt.Format(time.RFC3339), cr.RenewAt.Format(time.RFC3339))
	}

	conns := map[string]func() string{} // reader: the token in its remote secret
	for _, reader := range []string{"east", "west"} {
		target := map[string]string{"east": "west", "west": "east"}[reader]
		kc, err := l.Cluster(reader).Connect()
		if err != nil {
			t.Fatal(err)
		}
		conns[target] = func() string {
			s, err := kc.Kube.CoreV1().Secrets(ns).Get(ctx, federation.RemoteSecretName(target), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("%s: remote secret for %s: %v", reader, target, err)
			}
			cfg, err := clientcmd.Load(s.Data[target])
			if err != nil {
				t.Fatal(err)
			}
			return cfg.AuthInfos[target].Token
		}
	}
	tokens := func() map[string]federation.Credential {
		creds, err := h.loadCredentials(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]federation.Credential{}
		for _, cr := range creds {
			out[cr.Cluster] = cr
		}
		return out
	}

	for _, tc := range []struct {
		name    string
		cluster string
		rotated []string
		errWant string
	}{
		{"one cluster", "west", []string{"west"}, ""},
		{"every cluster", "", []string{"east", "west"}, ""},
		{"a cluster outside the mesh", "north", nil, "north"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tokens()
			start := time.Now()
			r, err := c.RotateReaders(ctx, nil, ReaderRotationOptions{Cluster: tc.cluster, Settle: 100 * time.Millisecond})
			if tc.errWant != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errWant) {
					t.Fatalf("rotate %s: %v, want an error naming %s", tc.cluster, err, tc.errWant)
				}
				if after := tokens(); after["east"].Token != before["east"].Token || after["west"].Token != before["west"].Token {
					t.Error("a refused rotation replaced tokens")
				}
				return
			}
			if err != nil {
				t.Fatalf("rotate: %v", err)
			}
			t.Logf("rotation of %v: %s", tc.rotated, time.Since(start).Round(time.Millisecond))
			if len(r.Readers) != len(tc.rotated) {
				t.Fatalf("rotated %+v, want %v", r.Readers, tc.rotated)
			}
			after := tokens()
			for i, want := range tc.rotated {
				rr := r.Readers[i]
				if rr.Cluster != want || !rr.OldTokenRefused || len(rr.Revoked) != 1 || rr.Revoked[0] != before[want].Binding || rr.Binding != after[want].Binding {
					t.Errorf("%s: %+v; want the old binding %s revoked, the old token refused, the new binding %s", want, rr, before[want].Binding, after[want].Binding)
				}
				if after[want].Token == before[want].Token {
					t.Errorf("%s: token not replaced", want)
				}
				if got := conns[want](); got != after[want].Token {
					t.Errorf("%s: the remote secret that reads it does not hold the new token", want)
				}
				kc, err := l.Cluster(want).Connect()
				if err != nil {
					t.Fatal(err)
				}
				acct := federation.Account{Namespace: ns, Name: federation.ReaderServiceAccount}
				if ok, err := federation.Accepted(ctx, kc, acct, before[want].Token); err != nil || ok {
					t.Errorf("%s: the replaced token is accepted (%v)", want, err)
				}
				if ok, err := federation.Accepted(ctx, kc, acct, after[want].Token); err != nil || !ok {
					t.Errorf("%s: the new token is refused (%v)", want, err)
				}
				t.Logf("%s: istiod synced after %dms, old token refused %dms after its revocation", want, rr.IstiodSyncedMillis, rr.RefusedMillis)
			}
			for _, other := range []string{"east", "west"} {
				if !strings.Contains(strings.Join(tc.rotated, ","), other) && after[other].Token != before[other].Token {
					t.Errorf("%s: token replaced by a rotation of %v", other, tc.rotated)
				}
			}
			if r.Apply == nil || r.Apply.ID == 0 {
				t.Errorf("rotation not journaled: %+v", r.Apply)
			}
		})
	}

	// The next apply finds every credential current and revokes nothing.
	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("apply after the rotations: %v %v", err, rep.Err())
	}
	for _, s := range rep.Steps {
		if strings.HasPrefix(s.Step, "reader ") && s.Action != "unchanged" || strings.HasPrefix(s.Step, "secret ") && s.Action != "unchanged" {
			t.Errorf("apply after the rotations: %s %s: %s (%s)", s.Cluster, s.Step, s.Action, s.Detail)
		}
	}
}

// TestRenewalRevokesAfterGrace is the reconcile loop's renewal, on the
// lab's API servers: with the stored tokens due, an apply issues new tokens and rewrites the remote secrets but revokes
// nothing (the replaced tokens still authenticate, for the istiods that have
// not switched yet); once the new tokens have stood for the grace, the next
// apply revokes the replaced ones, which are then refused, and rewrites
// nothing; status shows the new expiries and renewals.
func TestRenewalRevokesAfterGrace(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "renew")
	if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("apply: %v %v", err, rep.Err())
	}
	old, err := h.loadCredentials(ctx)
	if err != nil || len(old) != 2 {
		t.Fatalf("stored credentials: %d, %v", len(old), err)
	}
	acct := federation.Account{Namespace: ns, Name: federation.ReaderServiceAccount}
	kcs := map[string]*kube.Cluster{}
	for _, c := range []string{"east", "west"} {
		if kcs[c], err = l.Cluster(c).Connect(); err != nil {
			t.Fatal(err)
		}
	}
	// The stored tokens come due: recorded as expiring in an hour (the
	// tokens themselves live on; the hub renews by what it recorded).
	due := slices.Clone(old)
	for i := range due {
		due[i].Expiry = time.Now().Add(time.Hour)
	}
	data, err := json.Marshal(due)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Store.Update(ctx, func(tx *state.Tx) error { return tx.PutSecret(credentialsSecret, data) }); err != nil {
		t.Fatal(err)
	}
	h.SupersededGrace = 5 * time.Second

	steps := []struct {
		name                string
		wait                time.Duration
		issued, revoked     int
		secretsUpdated      int
		oldTokensAuthorized bool
	}{
		{"due: renewed, old tokens kept inside the grace", 0, 2, 0, 2, true},
		{"after the grace: old tokens revoked, nothing rewritten", 6 * time.Second, 0, 2, 0, false},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			time.Sleep(st.wait)
			rep, err := h.Apply(ctx, m, ApplyOptions{Source: "reconcile"})
			if err != nil || rep.Err() != nil {
				t.Fatalf("apply: %v %v", err, rep.Err())
			}
			count := map[string]int{}
			for _, s := range rep.Steps {
				switch {
				case strings.HasPrefix(s.Step, "reader ") && s.Action == "token issued":
					count["issued"]++
					// The detail goes on with the path the reader takes.
					if !strings.HasPrefix(s.Detail, string(federation.ReasonDue)) {
						t.Errorf("%s: issued for %q, want %q", s.Cluster, s.Detail, federation.ReasonDue)
					}
				case strings.HasPrefix(s.Step, "reader ") && s.Action == "revoked":
					count["revoked"]++
				case strings.HasPrefix(s.Step, "secret ") && s.Action == "updated":
					count["updated"]++
				}
			}
			if count["issued"] != st.issued || count["revoked"] != st.revoked || count["updated"] != st.secretsUpdated {
				t.Errorf("apply: %v, want %d issued, %d revoked, %d secrets updated", count, st.issued, st.revoked, st.secretsUpdated)
			}
			for _, c := range old {
				if st.oldTokensAuthorized {
					if ok, err := federation.Accepted(ctx, kcs[c.Cluster], acct, c.Token); err != nil || !ok {
						t.Errorf("%s: the replaced token is refused inside the grace (%v)", c.Cluster, err)
					}
					continue
				}
				start := time.Now()
				err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
					ok, err := federation.Accepted(ctx, kcs[c.Cluster], acct, c.Token)
					return err == nil && !ok, nil
				})
				if err != nil {
					t.Errorf("%s: the replaced token is still accepted after its revocation", c.Cluster)
				}
				t.Logf("%s: replaced token refused %s after the apply", c.Cluster, time.Since(start).Round(time.Millisecond))
			}
		})
	}
	st, err := h.Status(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cr := range st.Credentials {
		if d := cr.RenewAt.Sub(h.now()); d < federation.DefaultTokenLifetime/2-time.Hour {
			t.Errorf("%s: next renewal in %v, want about %v after the renewal", cr.Cluster, d, federation.DefaultTokenLifetime/2)
		}
	}
}
