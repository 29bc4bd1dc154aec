package federation

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

type tokenReviewCounter struct {
	rt http.RoundTripper
	n  *atomic.Int32
}

func (c tokenReviewCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/tokenreviews") {
		c.n.Add(1)
	}
	return c.rt.RoundTrip(r)
}

// TestLabTokenSignature: the cluster's published OIDC keys verify the tokens
// it issued (bound and legacy), and not another cluster's, an expired one or
// one of the other kind; a valid stored credential is then kept without a
// TokenReview.
func TestLabTokenSignature(t *testing.T) {
	ctx := ctxFor(t)
	l := testLab.Get(t)
	a := Account{Namespace: "sig-system", Name: ReaderServiceAccount}
	conn := map[string]*kube.Cluster{}
	bound := map[string]Credential{}
	for _, name := range []string{"east", "west"} {
		c, err := l.Cluster(name).Connect()
		if err != nil {
			t.Fatal(err)
		}
		conn[name] = c
		if err := ApplyAccount(ctx, c, a); err != nil {
			t.Fatal(err)
		}
		if bound[name], err = requestToken(ctx, c, a, TokenOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	legacy, err := legacyToken(ctx, conn["east"], a, false, TokenOptions{Legacy: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name   string
		token  string
		legacy bool
		at     time.Time
		want   bool
	}{
		{"bound token of the cluster", bound["east"].Token, false, now, true},
		{"legacy token of the cluster", legacy.Token, true, now, true},
		{"another cluster's token", bound["west"].Token, false, now, false},
		{"bound token past its expiry", bound["east"].Token, false, bound["east"].Expiry.Add(time.Minute), false},
		{"bound token taken for legacy", bound["east"].Token, true, now, false},
		{"legacy token taken for bound", legacy.Token, false, now, false},
		{"garbage", "a.b.c", false, now, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := signedByCluster(ctx, conn["east"], tc.token, tc.legacy, tc.at); got != tc.want {
				t.Errorf("signedByCluster = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("valid credential kept without a TokenReview", func(t *testing.T) {
		var n atomic.Int32
		cfg := rest.CopyConfig(conn["east"].Config)
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return tokenReviewCounter{rt: rt, n: &n} })
		c, err := kube.Connect("east", cfg)
		if err != nil {
			t.Fatal(err)
		}
		known := bound["east"]
		reason, err := CheckCredential(ctx, c, a, &known, TokenOptions{})
		if err != nil || reason != ReasonNone {
			t.Fatalf("CheckCredential = %q, %v; want kept", reason, err)
		}
		if n.Load() != 0 {
			t.Errorf("%d TokenReview calls, want none", n.Load())
		}
	})
}
