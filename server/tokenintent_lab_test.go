package server

import (
	"context"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestUntrackedTokenRevoked: an apply that recorded its intent to mint a
// reader token, minted it, and died before storing it leaves the intent; the
// next apply revokes that token (the account is recreated, so every token of
// the old one stops working), issues and stores a new one, and clears the
// intent.
func TestUntrackedTokenRevoked(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "tok")
	if rep, err := h.Apply(ctx, m, ApplyOptions{}); err != nil || rep.Err() != nil {
		t.Fatalf("first apply: %v %v", err, rep.Err())
	}
	east, err := l.Cluster("east").Connect()
	if err != nil {
		t.Fatal(err)
	}
	sas := east.Kube.CoreV1().ServiceAccounts(ns)
	before, err := sas.Get(ctx, federation.ReaderServiceAccount, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The crashed apply: intent recorded, token minted, nothing stored.
	if err := h.recordTokenIntent(ctx, federation.Credential{Cluster: "east", Namespace: ns, Account: federation.ReaderServiceAccount}); err != nil {
		t.Fatal(err)
	}
	secs := int64(3600)
	if _, err := sas.CreateToken(ctx, federation.ReaderServiceAccount, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	rep, err := h.Apply(ctx, m, ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("apply after the crash: %v %v", err, rep.Err())
	}
	revoked := false
	for _, s := range rep.Steps {
		if s.Cluster == "east" && s.Action == "revoked" {
			revoked = true
		}
	}
	if !revoked {
		t.Fatalf("no revocation in the report: %+v", rep.Steps)
	}
	after, err := sas.Get(ctx, federation.ReaderServiceAccount, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.UID == before.UID {
		t.Fatal("the reader account was not recreated: the untracked token still works")
	}
	h.Store.View(ctx, func(tx *state.Tx) error {
		intents, err := readTokenIntents(tx)
		if err != nil || len(intents) != 0 {
			t.Errorf("intents left after the apply: %v %v", intents, err)
		}
		return nil
	})
	creds, err := h.loadCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if c.Cluster != "east" {
			continue
		}
		ok, err := federation.Accepted(ctx, east, federation.Account{Namespace: ns, Name: federation.ReaderServiceAccount}, c.Token)
		if err != nil || !ok {
			t.Fatalf("the stored east token is not accepted: %v", err)
		}
	}
}
