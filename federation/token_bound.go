package federation

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Each bound reader token is bound to a Secret of its own (TokenRequest's
// boundObjectRef): the API server refuses the token once that Secret is
// gone. A rotation thus mints the new token beside the old one, writes it
// into the remote secrets, and only then deletes the old token's binding,
// which revokes that token alone; deleting the account would revoke the new
// one too.

// TokenBindingLabel, on a binding Secret, names the account whose token is
// bound to it.
const TokenBindingLabel = "flotilla.dev/token-of"

// TokenBindingName is the name of a new binding Secret of account sa.
func TokenBindingName(sa string) (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return sa + "-token-" + hex.EncodeToString(b), nil
}

// applyBinding creates a new, empty binding Secret for a token of a.
func applyBinding(ctx context.Context, c *kube.Cluster, a Account) (*corev1.Secret, error) {
	c = c.As(kube.ManagerFederation)
	name, err := TokenBindingName(a.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: name a token binding for %s: %w", c.Name, a, err)
	}
	labels := kube.ManagedLabels()
	labels[TokenBindingLabel] = a.Name
	ac := corev1ac.Secret(name, a.Namespace).WithLabels(labels).
		WithAnnotations(map[string]string{"flotilla.dev/purpose": "the reader token of " + a.Name + " bound to this Secret is revoked when it is deleted"}).
		WithType(corev1.SecretTypeOpaque)
	s, err := c.Kube.CoreV1().Secrets(a.Namespace).Apply(ctx, ac, c.ApplyOptions())
	if err != nil {
		return nil, fmt.Errorf("%s: apply token binding secret %s/%s: %w", c.Name, a.Namespace, name, err)
	}
	return s, nil
}

// bindingCurrent reports whether the Secret cred's token is bound to still
// exists as the object the token names (a Secret deleted and made again
// under the same name does not revive the token).
func bindingCurrent(ctx context.Context, c *kube.Cluster, a Account, cred Credential) (bool, error) {
	if cred.Binding == "" {
		return true, nil
	}
	s, err := c.Kube.CoreV1().Secrets(a.Namespace).Get(ctx, cred.Binding, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: read token binding secret %s/%s: %w", c.Name, a.Namespace, cred.Binding, err)
	}
	name, uid, ok := tokenBoundSecret(cred.Token)
	return ok && name == s.Name && uid == string(s.UID), nil
}

// tokenBoundSecret reads the Secret a bound token names in its claims
// (kubernetes.io.secret); unverified, as tokenAccountUID.
func tokenBoundSecret(token string) (name, uid string, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", false
	}
	var claims struct {
		K8s struct {
			Secret struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"secret"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.K8s.Secret.Name == "" {
		return "", "", false
	}
	return claims.K8s.Secret.Name, claims.K8s.Secret.UID, true
}

// Revocation is one superseded token revoked: its binding Secret deleted.
type Revocation struct {
	Cluster string
	Account Account
	Binding string
	// Superseded is when the token that replaced it was minted.
	Superseded time.Time
}

// RevokeSuperseded revokes every token of account a in cluster c other
// than keep's, by deleting their binding Secrets, once keep's token has been
// in use for grace (its binding's age): the remote secrets must hold keep
// before the tokens they held stop working. The caller has written keep into
// every remote secret that reads c. Nothing is revoked for a keep that is
// not bound (legacy tokens). hold, when set, is asked only when there is a
// token to revoke: true keeps them all for now (a reader not switched yet).
func RevokeSuperseded(ctx context.Context, c *kube.Cluster, a Account, keep Credential, grace time.Duration, now time.Time, hold func(context.Context) bool) ([]Revocation, error) {
	if keep.Binding == "" {
		return nil, nil
	}
	c = c.As(kube.ManagerFederation)
	list, err := c.Kube.CoreV1().Secrets(a.Namespace).List(ctx, metav1.ListOptions{LabelSelector: TokenBindingLabel + "=" + a.Name})
	if err != nil {
		return nil, fmt.Errorf("%s: list token binding secrets of %s: %w", c.Name, a, err)
	}
	var current *corev1.Secret
	for i := range list.Items {
		if list.Items[i].Name == keep.Binding {
			current = &list.Items[i]
		}
	}
	if current == nil {
		// keep itself is no longer valid: the next check renews it; revoke
		// nothing meanwhile, the remote secrets may hold an older token.
		return nil, nil
	}
	since := current.CreationTimestamp.Time
	if now.Sub(since) < grace || len(list.Items) < 2 {
		return nil, nil
	}
	if hold != nil && hold(ctx) {
		return nil, nil
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var out []Revocation
	for i := range list.Items {
		s := &list.Items[i]
		if s.Name == keep.Binding || s.Labels[ManagedByLabel] != ManagedByValue {
			continue
		}
		// Conditional on the object read: a binding made meanwhile (a
		// concurrent mint) is not this one.
		opts := c.DeleteOptions()
		opts.Preconditions = &metav1.Preconditions{UID: &s.UID}
		err := c.Kube.CoreV1().Secrets(a.Namespace).Delete(ctx, s.Name, opts)
		if err != nil && !apierrors.IsNotFound(err) {
			return out, fmt.Errorf("%s: revoke a superseded token of %s: delete secret %s/%s: %w", c.Name, a, a.Namespace, s.Name, err)
		}
		out = append(out, Revocation{Cluster: c.Name, Account: a, Binding: s.Name, Superseded: since})
	}
	return out, nil
}

// RevokeAll revokes every token of account a in cluster c that flotilla
// bound, by deleting their binding Secrets, and its legacy token, by
// deleting the token Secret flotilla made: for a cluster no other cluster
// reads any more, whose tokens only a leaving cluster held. A bound token
// minted before flotilla bound them is not among them.
func RevokeAll(ctx context.Context, c *kube.Cluster, a Account) ([]Revocation, error) {
	c = c.As(kube.ManagerFederation)
	var out []Revocation
	legacy, err := c.Kube.CoreV1().Secrets(a.Namespace).Get(ctx, LegacyTokenSecretName(a.Name), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("%s: read token secret %s/%s: %w", c.Name, a.Namespace, LegacyTokenSecretName(a.Name), err)
	case legacy.Labels[ManagedByLabel] == ManagedByValue:
		opts := c.DeleteOptions()
		opts.Preconditions = &metav1.Preconditions{UID: &legacy.UID}
		err := c.Kube.CoreV1().Secrets(a.Namespace).Delete(ctx, legacy.Name, opts)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%s: revoke the legacy token of %s: delete secret %s/%s: %w", c.Name, a, a.Namespace, legacy.Name, err)
		}
		out = append(out, Revocation{Cluster: c.Name, Account: a, Binding: legacy.Name})
	}
	list, err := c.Kube.CoreV1().Secrets(a.Namespace).List(ctx, metav1.ListOptions{LabelSelector: TokenBindingLabel + "=" + a.Name})
	if err != nil {
		return nil, fmt.Errorf("%s: list token binding secrets of %s: %w", c.Name, a, err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	for i := range list.Items {
		s := &list.Items[i]
		if s.Labels[ManagedByLabel] != ManagedByValue {
			continue
		}
		opts := c.DeleteOptions()
		opts.Preconditions = &metav1.Preconditions{UID: &s.UID}
		err := c.Kube.CoreV1().Secrets(a.Namespace).Delete(ctx, s.Name, opts)
		if err != nil && !apierrors.IsNotFound(err) {
			return out, fmt.Errorf("%s: revoke a token of %s: delete secret %s/%s: %w", c.Name, a, a.Namespace, s.Name, err)
		}
		out = append(out, Revocation{Cluster: c.Name, Account: a, Binding: s.Name})
	}
	return out, nil
}
