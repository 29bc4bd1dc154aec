package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/state"
)

// tokenIntentsKey holds the reader tokens about to be minted and not yet
// stored, by credential key. Only names: no token is ever in it.
const tokenIntentsKey = "federation/token-intents"

type tokenIntent struct {
	Cluster   string    `json:"cluster"`
	Namespace string    `json:"namespace"`
	Account   string    `json:"account"`
	At        time.Time `json:"at"`
}

func readTokenIntents(tx *state.Tx) (map[string]tokenIntent, error) {
	intents := map[string]tokenIntent{}
	if _, err := tx.Value(tokenIntentsKey, &intents); err != nil {
		return nil, err
	}
	return intents, nil
}

// recordTokenIntent is federation's BeforeMint: the intent is durable before
// the token exists.
func (h *Hub) recordTokenIntent(ctx context.Context, c federation.Credential) error {
	return h.Store.Update(ctx, func(tx *state.Tx) error {
		intents, err := readTokenIntents(tx)
		if err != nil {
			return err
		}
		intents[c.Key()] = tokenIntent{Cluster: c.Cluster, Namespace: c.Namespace, Account: c.Account, At: h.now()}
		return tx.PutValue(tokenIntentsKey, intents)
	})
}

// clearTokenIntents drops the intents of credentials now stored; called in
// the transaction that stores them.
func clearTokenIntents(tx *state.Tx, stored []federation.Credential) error {
	intents, err := readTokenIntents(tx)
	if err != nil || len(intents) == 0 {
		return err
	}
	for _, c := range stored {
		delete(intents, c.Key())
	}
	if len(intents) == 0 {
		return tx.DeleteValue(tokenIntentsKey)
	}
	return tx.PutValue(tokenIntentsKey, intents)
}

// revokeUntrackedTokens acts on intents left by an apply that minted a token
// and ended before storing it: that token is valid and nothing tracks it. A
// bound token cannot be revoked alone, so the reader account is deleted,
// which revokes every token of it; the apply then recreates the account and
// issues a new token, which it stores. A cluster not reachable now keeps its
// intent for the next apply.
func (h *Hub) revokeUntrackedTokens(ctx context.Context, conns map[string]*kube.Cluster, rec *recorder) {
	var intents map[string]tokenIntent
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		var err error
		intents, err = readTokenIntents(tx)
		return err
	})
	if err != nil {
		rec.fail(ctx, "", "reader tokens", fmt.Errorf("state: token intents: %w", err))
		return
	}
	for _, key := range slices.Sorted(maps.Keys(intents)) {
		in := intents[key]
		kc := conns[in.Cluster]
		if kc == nil {
			continue
		}
		step := "reader " + in.Namespace + "/" + in.Account
		err := kc.Kube.CoreV1().ServiceAccounts(in.Namespace).Delete(ctx, in.Account, kc.DeleteOptions())
		if err != nil && !apierrors.IsNotFound(err) {
			rec.fail(ctx, in.Cluster, step, fmt.Errorf("%s: revoke the untracked token of serviceaccount %s/%s: %w", in.Cluster, in.Namespace, in.Account, err))
			continue
		}
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			cur, err := readTokenIntents(tx)
			if err != nil {
				return err
			}
			delete(cur, key)
			if len(cur) == 0 {
				return tx.DeleteValue(tokenIntentsKey)
			}
			return tx.PutValue(tokenIntentsKey, cur)
		})
		if err != nil {
			rec.fail(ctx, in.Cluster, step, fmt.Errorf("state: token intents: %w", err))
			continue
		}
		rec.add(ctx, Step{Cluster: in.Cluster, Step: step, Action: "revoked",
			Detail: "a token minted at " + in.At.UTC().Format(time.RFC3339) + " by an apply that ended before storing it; the account is recreated with a new token"})
	}
}
