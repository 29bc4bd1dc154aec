package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server"
)

// TestPrintRotationAndCredentials: the rotation's table names each read
// cluster, its holders, the new token's expiry and renewal, the revoked
// count and whether the old token is refused, or the error; -o json keeps
// every field; status lists each credential's expiry and next renewal.
func TestPrintRotationAndCredentials(t *testing.T) {
	exp := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	r := &server.ReaderRotation{Readers: []server.RotatedReader{
		{Cluster: "west", Account: "serviceaccount istio-system/istio-reader-service-account", HeldBy: []string{"east"}, ExpiresAt: exp, RenewAt: exp.Add(-84 * time.Hour),
			Revoked: []string{"istio-reader-service-account-token-0a1b2c3d"}, IstiodSyncedMillis: 250, OldTokenRefused: true, RefusedMillis: 9500},
		{Cluster: "east", HeldBy: []string{"west"}, Revoked: []string{}, Error: "not every remote secret that reads it was written"},
	}}
	st := &server.Status{Mesh: "mesh1", Credentials: []server.CredentialStatus{{Cluster: "west", HeldBy: []string{"east"}, IssuedAt: exp.Add(-168 * time.Hour), ExpiresAt: exp, RenewAt: exp.Add(-84 * time.Hour)}}}
	tests := []struct {
		name  string
		print func(*bytes.Buffer) error
		want  []string
	}{
		{"rotation table", func(b *bytes.Buffer) error { return printRotation(b, r, "table") },
			[]string{"west", "east", "2026-12-07T01:00:00Z", "2026-12-03T13:00:00Z", "refused after 9.5s", "250ms", "still accepted", "not every remote secret"}},
		{"rotation json", func(b *bytes.Buffer) error { return printRotation(b, r, "json") },
			[]string{`"cluster": "west"`, `"oldTokenRefused": true`, `"refusedMillis": 9500`, `"renewAt": "2026-12-03T13:00:00Z"`, `"revoked": [`}},
		{"status table", func(b *bytes.Buffer) error { return printStatus(b, st, "table") },
			[]string{"READER CREDENTIAL OF", "NEXT RENEWAL", "2026-12-07T01:00:00Z", "2026-12-03T13:00:00Z"}},
		{"status json", func(b *bytes.Buffer) error { return printStatus(b, st, "json") },
			[]string{`"credentials": [`, `"expiresAt": "2026-12-07T01:00:00Z"`, `"renewAt": "2026-12-03T13:00:00Z"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.print(&b); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			if strings.HasSuffix(tc.name, "json") && !json.Valid(b.Bytes()) {
				t.Errorf("not JSON:\n%s", b.String())
			}
		})
	}
}
