package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestLiveProgress(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  map[string]string // the last drawn line per key
	}{
		{"each cluster keeps its latest step", []string{
			"east:      cacerts istio-system/cacerts: created\n",
			"west:      cacerts istio-system/cacerts: created\n",
			"east:      secret istio-system/istio-remote-secret-west: created\n",
		}, map[string]string{"east": "secret istio-system/istio-remote-secret-west: created", "west": "cacerts istio-system/cacerts: created"}},
		{"control-plane lines go to their cluster", []string{
			"mesh:      root CA: generated\n",
			"mesh:      west: applied Istio default\n",
		}, map[string]string{"mesh": "root CA: generated", "west": "applied Istio default"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			p := newLiveProgress(&out, []string{"east", "west"}, 200)
			for _, l := range tc.lines {
				p.Write([]byte(l))
			}
			// The final block is what follows the last cursor-up.
			text := out.String()
			block := text[strings.LastIndex(text, "\x1b[3A")+len("\x1b[3A"):]
			got := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(block), "\n") {
				l = strings.TrimPrefix(strings.TrimSpace(l), "\x1b[2K")
				k, v, _ := strings.Cut(l, ":")
				got[k] = strings.TrimSpace(v)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q (block %q)", k, got[k], v, block)
				}
			}
			if n := strings.Count(block, "\n"); n != 3 {
				t.Errorf("block has %d lines, want 3 (mesh, east, west)", n)
			}
		})
	}
}
