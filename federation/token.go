package federation

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// DefaultTokenLifetime is the lifetime asked of the TokenRequest API (seven
// days): a leaked reader token is worth little for long, and each renewal
// is a rotation that drops nothing. The API server may cap it
// (--service-account-max-token-expiration).
const DefaultTokenLifetime = 7 * 24 * time.Hour

// Credential is the bearer token of one account in one cluster, as the hub
// stores it between reconciles so that an unchanged token leaves the remote
// secrets unchanged.
type Credential struct {
	Cluster   string
	Namespace string
	Account   string
	// Token is a secret: never log it. String and GoString redact it.
	Token string
	// Expiry is when the token stops working; zero for a legacy
	// service-account-token secret, which lives until the secret is deleted.
	Expiry time.Time
	// Legacy marks a token read from a kubernetes.io/service-account-token secret.
	Legacy bool
	// Binding is the Secret (in Namespace) the bound token is bound to:
	// deleting it revokes this token alone. "" for a legacy token, or a
	// bound token minted before flotilla bound them.
	Binding string `json:",omitempty"`
}

// Key identifies the account the credential belongs to.
func (c Credential) Key() string { return c.Cluster + "/" + c.Namespace + "/" + c.Account }

func (c Credential) String() string {
	exp := "never"
	if !c.Expiry.IsZero() {
		exp = c.Expiry.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("credential %s (token redacted, expires %s)", c.Key(), exp)
}

// GoString keeps %#v from printing the token.
func (c Credential) GoString() string { return c.String() }

// TokenOptions say how credentials are minted and when they are renewed.
type TokenOptions struct {
	// Lifetime asked of the TokenRequest API; 0 is DefaultTokenLifetime.
	Lifetime time.Duration
	// RenewBefore renews a token this long before it expires; 0 is half of
	// Lifetime, so that a hub down for days still renews in time.
	RenewBefore time.Duration
	// Rotate renews the credentials of these read clusters whatever their
	// state (flotilla federation rotate: a suspected leak).
	Rotate map[string]bool
	// Legacy uses a long-lived kubernetes.io/service-account-token secret,
	// as istioctl create-remote-secret does, instead of TokenRequest.
	Legacy bool
	// LegacyWait bounds the wait for the token controller to fill that
	// secret; 0 is 30s.
	LegacyWait time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// BeforeMint, when set, records that a token is about to be minted for
	// the credential's account (Token empty), before it is: a process killed
	// between minting and storing the token then leaves a record to act on
	// rather than a valid token nothing tracks. An error stops the mint.
	BeforeMint func(ctx context.Context, c Credential) error
}

func (o TokenOptions) lifetime() time.Duration {
	if o.Lifetime > 0 {
		return o.Lifetime
	}
	return DefaultTokenLifetime
}

func (o TokenOptions) renewBefore() time.Duration {
	if o.RenewBefore > 0 {
		return o.RenewBefore
	}
	return o.lifetime() / 2
}

// RenewAt is when a credential expiring at expiry is renewed; zero for one
// that does not expire.
func (o TokenOptions) RenewAt(expiry time.Time) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	return expiry.Add(-o.renewBefore())
}

func (o TokenOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// LegacyTokenSecretName is the long-lived token secret of account sa, named as istioctl names it.
func LegacyTokenSecretName(sa string) string { return sa + "-istio-remote-secret-token" }

// RenewalReason says why a credential must be replaced; "" means it is good.
type RenewalReason string

const (
	ReasonNone     RenewalReason = ""
	ReasonMissing  RenewalReason = "no stored token"
	ReasonExpired  RenewalReason = "expired"
	ReasonDue      RenewalReason = "within the renew-before window"
	ReasonRejected RenewalReason = "refused by TokenReview"
	ReasonKind     RenewalReason = "token kind changed (legacy/bound)"
	ReasonRotate   RenewalReason = "rotated on demand"
	ReasonLifetime RenewalReason = "outlives the configured lifetime"
	ReasonUnbound  RenewalReason = "not bound to a revocable secret"
)

// CheckCredential says whether known, a stored credential of account a in
// cluster c, must be renewed: missing, expired, due, of the other kind than
// configured, or no longer accepted (account or legacy secret deleted). The
// account and legacy secret are read directly rather than trusted to
// TokenReview alone: the API server's authenticator reads them through a
// cache, which keeps accepting a token for a moment after its account was
// deleted and recreated.
func CheckCredential(ctx context.Context, c *kube.Cluster, a Account, known *Credential, o TokenOptions) (RenewalReason, error) {
	if known == nil || known.Token == "" {
		return ReasonMissing, nil
	}
	if known.Legacy != o.Legacy {
		return ReasonKind, nil
	}
	if o.Rotate[c.Name] {
		return ReasonRotate, nil
	}
	if !known.Expiry.IsZero() {
		now := o.now()
		if !now.Before(known.Expiry) {
			return ReasonExpired, nil
		}
		if !now.Before(known.Expiry.Add(-o.renewBefore())) {
			return ReasonDue, nil
		}
		// A shorter configured lifetime takes effect at once, not when the
		// long token it replaces comes due (a minute of slack for clocks).
		if known.Expiry.Sub(now) > o.lifetime()+time.Minute {
			return ReasonLifetime, nil
		}
	}
	if !known.Legacy && known.Binding == "" {
		// Only deleting its account would revoke it, and every token of
		// the account with it.
		return ReasonUnbound, nil
	}
	current, err := issuedByCurrent(ctx, c, a, *known)
	if err != nil || !current {
		return ReasonRejected, err
	}
	// The account is the one the token names; a signature the cluster's
	// published keys verify settles the rest without a TokenReview.
	if signedByCluster(ctx, c, known.Token, known.Legacy, o.now()) {
		return ReasonNone, nil
	}
	ok, err := Accepted(ctx, c, a, known.Token)
	if err != nil {
		return ReasonNone, err
	}
	if !ok {
		return ReasonRejected, nil
	}
	return ReasonNone, nil
}

// issuedByCurrent reports whether cred belongs to the account as it exists
// now: a bound token names its account's UID; a legacy token is the one in
// the account's token secret.
func issuedByCurrent(ctx context.Context, c *kube.Cluster, a Account, cred Credential) (bool, error) {
	if cred.Legacy {
		s, err := c.Kube.CoreV1().Secrets(a.Namespace).Get(ctx, LegacyTokenSecretName(a.Name), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("%s: read token secret of %s: %w", c.Name, a, err)
		}
		return string(s.Data[corev1.ServiceAccountTokenKey]) == cred.Token, nil
	}
	sa, err := c.Kube.CoreV1().ServiceAccounts(a.Namespace).Get(ctx, a.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: read %s: %w", c.Name, a, err)
	}
	uid, ok := tokenAccountUID(cred.Token)
	if !ok || uid != string(sa.UID) {
		return false, nil
	}
	return bindingCurrent(ctx, c, a, cred)
}

// tokenAccountUID reads the account UID claim of a bound service-account
// token. The signature is not checked: the token is one flotilla stored,
// and TokenReview still has the last word.
func tokenAccountUID(token string) (string, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	var claims struct {
		K8s struct {
			ServiceAccount struct {
				UID string `json:"uid"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.K8s.ServiceAccount.UID == "" {
		return "", false
	}
	return claims.K8s.ServiceAccount.UID, true
}

// Accepted asks cluster c, through TokenReview, whether token authenticates
// as account a.
func Accepted(ctx context.Context, c *kube.Cluster, a Account, token string) (bool, error) {
	tr, err := c.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("%s: token review for %s: %w", c.Name, a, err)
	}
	want := "system:serviceaccount:" + a.Namespace + ":" + a.Name
	return tr.Status.Authenticated && tr.Status.User.Username == want, nil
}

// RenewCredential checks known (see CheckCredential) and, when it must be
// renewed, issues a new credential for account a. It returns the credential
// to use and the reason it was renewed ("" when known was kept).
// The account must exist (ApplyAccount).
func RenewCredential(ctx context.Context, c *kube.Cluster, a Account, known *Credential, o TokenOptions) (Credential, RenewalReason, error) {
	reason, err := CheckCredential(ctx, c, a, known, o)
	if err != nil {
		return Credential{}, ReasonNone, err
	}
	if reason == ReasonNone {
		return *known, ReasonNone, nil
	}
	if c.DryRun {
		// A dry run mints nothing; the secrets it previews carry no token.
		return Credential{Cluster: c.Name, Namespace: a.Namespace, Account: a.Name, Legacy: o.Legacy}, reason, nil
	}
	if o.BeforeMint != nil {
		if err := o.BeforeMint(ctx, Credential{Cluster: c.Name, Namespace: a.Namespace, Account: a.Name, Legacy: o.Legacy}); err != nil {
			return Credential{}, ReasonNone, fmt.Errorf("%s: record the token for %s before minting it: %w", c.Name, a, err)
		}
	}
	var cred Credential
	if o.Legacy {
		cred, err = legacyToken(ctx, c, a, reason == ReasonRejected || reason == ReasonRotate, o)
	} else {
		cred, err = requestToken(ctx, c, a, o)
	}
	return cred, reason, err
}

// requestToken mints a token bound to a new binding Secret of its own:
// deleting that Secret revokes this token alone (RevokeSuperseded), and
// deleting the account revokes them all.
func requestToken(ctx context.Context, c *kube.Cluster, a Account, o TokenOptions) (Credential, error) {
	b, err := applyBinding(ctx, c, a)
	if err != nil {
		return Credential{}, err
	}
	secs := int64(o.lifetime() / time.Second)
	tr, err := c.Kube.CoreV1().ServiceAccounts(a.Namespace).CreateToken(ctx, a.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs, BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Secret", APIVersion: "v1", Name: b.Name, UID: b.UID,
		}},
	}, c.CreateOptions())
	if err != nil {
		return Credential{}, fmt.Errorf("%s: request token for %s: %w", c.Name, a, err)
	}
	if tr.Status.Token == "" {
		// A dry run (or an odd server) answers without a token.
		return Credential{}, fmt.Errorf("%s: request token for %s: no token in the answer (dry run?)", c.Name, a)
	}
	return Credential{
		Cluster: c.Name, Namespace: a.Namespace, Account: a.Name,
		Token: tr.Status.Token, Expiry: tr.Status.ExpirationTimestamp.Time, Binding: b.Name,
	}, nil
}

// legacyToken reads the token that kube-controller-manager's token
// controller writes into a service-account-token secret, creating the secret
// first; recreate replaces a secret whose token is no longer accepted.
func legacyToken(ctx context.Context, c *kube.Cluster, a Account, recreate bool, o TokenOptions) (Credential, error) {
	c = c.As(kube.ManagerFederation)
	name := LegacyTokenSecretName(a.Name)
	ref := a.Namespace + "/" + name
	secrets := c.Kube.CoreV1().Secrets(a.Namespace)
	if recreate {
		if err := secrets.Delete(ctx, name, c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			return Credential{}, fmt.Errorf("%s: delete rejected token secret %s: %w", c.Name, ref, err)
		}
		// The apply below must create a new object, not race the old one's deletion.
		if err := waitGone(ctx, c, a.Namespace, name); err != nil {
			return Credential{}, err
		}
	}
	ac := corev1ac.Secret(name, a.Namespace).
		WithLabels(kube.ManagedLabels()).
		WithAnnotations(map[string]string{corev1.ServiceAccountNameKey: a.Name}).
		WithType(corev1.SecretTypeServiceAccountToken)
	got, err := secrets.Apply(ctx, ac, c.ApplyOptions())
	if err != nil {
		return Credential{}, fmt.Errorf("%s: apply token secret %s: %w", c.Name, ref, err)
	}
	if err := c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("secrets"), got); err != nil {
		return Credential{}, err
	}
	wt := o.LegacyWait
	if wt == 0 {
		wt = 30 * time.Second
	}
	var token []byte
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, wt, true, func(ctx context.Context) (bool, error) {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		token = s.Data[corev1.ServiceAccountTokenKey]
		return len(token) > 0, nil
	})
	if err != nil {
		return Credential{}, fmt.Errorf("%s: wait for the token controller to fill secret %s: %w", c.Name, ref, err)
	}
	return Credential{Cluster: c.Name, Namespace: a.Namespace, Account: a.Name, Token: string(token), Legacy: true}, nil
}

func waitGone(ctx context.Context, c *kube.Cluster, ns, name string) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
	if err != nil {
		return fmt.Errorf("%s: wait for secret %s/%s to go: %w", c.Name, ns, name, err)
	}
	return nil
}
