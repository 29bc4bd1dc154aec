package server

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestCACertsGate: a cluster's control plane waits for its cacerts and
// is refused when the PKI step failed there.
func TestCACertsGate(t *testing.T) {
	boom := errors.New("cert-manager did not issue")
	for _, tc := range []struct {
		name    string
		open    func(g *cacertsGate)
		cluster string
		says    string // "" passes
	}{
		{"cacerts written", func(g *cacertsGate) { g.done("east", nil) }, "east", ""},
		{"cacerts failed", func(g *cacertsGate) { g.done("east", boom) }, "east", "cacerts is not in place"},
		{"first outcome counts", func(g *cacertsGate) { g.done("east", nil); g.done("east", boom) }, "east", ""},
		{"the PKI step ended early", func(g *cacertsGate) { g.doneAll(boom) }, "west", "did not issue"},
		{"a cluster the gate does not know", func(*cacertsGate) {}, "north", ""},
		{"never opened: the apply is cancelled", func(*cacertsGate) {}, "east", "context canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newCACertsGate([]string{"east", "west"})
			tc.open(g)
			ctx, cancel := context.WithCancel(context.Background())
			if tc.says == "context canceled" {
				cancel()
			}
			defer cancel()
			err := g.wait(ctx, tc.cluster)
			if (err == nil) != (tc.says == "") || (err != nil && !strings.Contains(err.Error(), tc.says)) {
				t.Fatalf("wait: %v, want %q", err, tc.says)
			}
		})
	}
}
