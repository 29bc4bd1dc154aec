package csragent

import (
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestLimiter: per-key and overall buckets on a fixed clock; a refusal is
// ResourceExhausted with a RetryInfo detail and costs no token.
func TestLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	type call struct {
		key string
		ok  bool
	}
	for _, tc := range []struct {
		name    string
		perKey  Limit
		overall Limit
		off     bool
		calls   []call
	}{
		{"per key: burst then refused", Limit{Rate: 1, Burst: 2}, Limit{Rate: 100, Burst: 100}, false,
			[]call{{"a", true}, {"a", true}, {"a", false}, {"b", true}}},
		{"overall: refused across keys", Limit{Rate: 1, Burst: 5}, Limit{Rate: 1, Burst: 2}, false,
			[]call{{"a", true}, {"b", true}, {"c", false}, {"a", false}}},
		{"an overall refusal gives the key's token back", Limit{Rate: 0, Burst: 1}, Limit{Rate: 0, Burst: 1}, false,
			[]call{{"a", true}, {"b", false}}},
		{"off", Limit{Rate: 0, Burst: 1}, Limit{Rate: 0, Burst: 1}, true,
			[]call{{"a", true}, {"a", true}, {"b", true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimiter("test", tc.perKey, tc.overall, tc.off)
			for i, c := range tc.calls {
				err := l.allow(c.key, now)
				if (err == nil) != c.ok {
					t.Fatalf("call %d (%s): %v, want ok=%v", i, c.key, err, c.ok)
				}
				if err == nil {
					continue
				}
				st := status.Convert(err)
				if st.Code() != codes.ResourceExhausted {
					t.Fatalf("call %d: %s, want ResourceExhausted", i, st.Code())
				}
				var hint *errdetails.RetryInfo
				for _, d := range st.Details() {
					if r, ok := d.(*errdetails.RetryInfo); ok {
						hint = r
					}
				}
				if hint == nil || hint.RetryDelay.AsDuration() < time.Second {
					t.Fatalf("call %d: no retry hint of at least a second in %v", i, st.Details())
				}
			}
		})
	}
}

// TestLimitsDefaults: zero fields take the defaults; Unlimited turns all off.
func TestLimitsDefaults(t *testing.T) {
	got := Limits{Requests: Limit{Rate: 1, Burst: 1}}.withDefaults()
	if got.Requests != (Limit{Rate: 1, Burst: 1}) || got.RequestsPerIdentity != DefaultLimits.RequestsPerIdentity {
		t.Fatalf("withDefaults: %+v", got)
	}
	if off := (Limits{Unlimited: true}).withDefaults(); !off.Unlimited {
		t.Fatal("Unlimited lost")
	}
}
