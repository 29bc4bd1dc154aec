package csragent

import (
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Limit is a token bucket: Rate per second, Burst at once. A zero Limit in
// Limits takes DefaultLimits' value; Rate 0 with a Burst allows Burst
// calls and no more.
type Limit struct {
	Rate  rate.Limit
	Burst int
}

func (l Limit) zero() bool { return l.Rate == 0 && l.Burst == 0 }

// Limits bound what callers can make the agent do to the API server, per
// identity and overall. A refusal is ResourceExhausted with a RetryInfo
// detail saying when to come back, and nothing is created for it.
type Limits struct {
	// TokenReviewsPerToken limits reviews of one bearer token (known by
	// its hash: the token is not an identity until reviewed).
	TokenReviewsPerToken Limit
	// TokenReviews limits reviews overall.
	TokenReviews Limit
	// RequestsPerIdentity limits CertificateRequests per SPIFFE ID.
	RequestsPerIdentity Limit
	// Requests limits CertificateRequests overall.
	Requests Limit
	// Unlimited turns every limit off (benchmarks).
	Unlimited bool
}

// DefaultLimits leave room for a rollout of a few hundred pods of one
// service account and stop one caller from flooding the API server. An
// identity is a service account, shared by every replica.
var DefaultLimits = Limits{
	TokenReviewsPerToken: Limit{Rate: 2, Burst: 10},
	TokenReviews:         Limit{Rate: 200, Burst: 400},
	RequestsPerIdentity:  Limit{Rate: 20, Burst: 200},
	Requests:             Limit{Rate: 200, Burst: 400},
}

func (l Limits) withDefaults() Limits {
	if l.Unlimited {
		return Limits{Unlimited: true}
	}
	d := DefaultLimits
	for _, p := range []struct{ v, d *Limit }{
		{&l.TokenReviewsPerToken, &d.TokenReviewsPerToken}, {&l.TokenReviews, &d.TokenReviews},
		{&l.RequestsPerIdentity, &d.RequestsPerIdentity}, {&l.Requests, &d.Requests},
	} {
		if p.v.zero() {
			*p.v = *p.d
		}
	}
	return l
}

// maxKeys bounds the per-key buckets kept; idle ones are dropped first.
const maxKeys = 10000

// limiter is one overall bucket and one bucket per key.
type limiter struct {
	what    string
	overall *rate.Limiter
	perKey  Limit
	off     bool

	mu   sync.Mutex
	keys map[string]*keyBucket
}

type keyBucket struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiter(what string, perKey, overall Limit, off bool) *limiter {
	return &limiter{what: what, overall: rate.NewLimiter(overall.Rate, overall.Burst), perKey: perKey, off: off, keys: map[string]*keyBucket{}}
}

// allow takes a token from key's bucket and the overall one, or neither,
// and refuses with ResourceExhausted and a retry hint.
func (l *limiter) allow(key string, now time.Time) error {
	if l.off {
		return nil
	}
	l.mu.Lock()
	b := l.keys[key]
	if b == nil {
		if len(l.keys) >= maxKeys {
			l.evict(now)
		}
		b = &keyBucket{l: rate.NewLimiter(l.perKey.Rate, l.perKey.Burst)}
		l.keys[key] = b
	}
	b.seen = now
	l.mu.Unlock()
	per := b.l.ReserveN(now, 1)
	if d, ok := delay(per, now); !ok {
		return exhausted(fmt.Sprintf("%s: too many for this caller", l.what), d)
	}
	all := l.overall.ReserveN(now, 1)
	if d, ok := delay(all, now); !ok {
		per.CancelAt(now)
		return exhausted(fmt.Sprintf("%s: too many overall", l.what), d)
	}
	return nil
}

// delay says whether r may go now; otherwise it gives r back and returns
// how long to wait (an hour when the bucket never refills).
func delay(r *rate.Reservation, now time.Time) (time.Duration, bool) {
	if !r.OK() {
		return time.Hour, false
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return 0, true
	}
	r.CancelAt(now)
	if d == rate.InfDuration {
		d = time.Hour
	}
	return d, false
}

// evict drops the buckets idle longest; called with mu held.
func (l *limiter) evict(now time.Time) {
	for k, b := range l.keys {
		if now.Sub(b.seen) > time.Minute {
			delete(l.keys, k)
		}
	}
	if len(l.keys) >= maxKeys {
		clear(l.keys) // all busy: forget them rather than grow without bound
	}
}

func exhausted(msg string, retry time.Duration) error {
	retry = max(retry.Round(time.Second), time.Second)
	st := status.Newf(codes.ResourceExhausted, "%s; retry in %s", msg, retry)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = d
	}
	return st.Err()
}

func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return string(sum[:])
}
