package dashboard_test

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flotillamesh/flotilla/server/dashboard"
)

// member is a cluster of a synthetic status: its role, network, the cluster
// that serves it, and the clusters it reads.
type member struct {
	name, role, network, controlPlane string
	reads                             []string
}

// staticAPI answers status from members, trust (nil: none), an empty
// journal and no checks.
func staticAPI(topology string, members []member, trust any) http.Handler {
	if trust == nil {
		trust = map[string]any{"readers": []any{}}
	}
	var clusters []map[string]any
	for _, m := range members {
		var secrets []map[string]any
		for _, r := range m.reads {
			secrets = append(secrets, map[string]any{"name": "istio-remote-secret-" + r, "namespace": "istio-system", "target": r, "expected": true, "healthy": true})
		}
		clusters = append(clusters, map[string]any{"name": m.name, "role": m.role, "network": m.network, "controlPlane": m.controlPlane,
			"reachable": true, "gatewayAddress": "10.1.0.1", "remoteSecrets": secrets, "drift": []string{}})
	}
	answers := map[string]any{
		"/api/v1/status":  map[string]any{"mesh": "m", "topology": topology, "observedAt": time.Now(), "clusters": clusters},
		"/api/v1/trust":   trust,
		"/api/v1/journal": []any{},
		"/api/v1/check":   []any{},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := answers[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	})
}

// TestDashboardTopologies: primary-remote and external control plane show
// what serves what (a dashed arrow from the serving cluster's istiod to each
// cluster it serves) beside the remote secrets' arrows, in chromium.
func TestDashboardTopologies(t *testing.T) {
	cases := []struct {
		name     string
		topology string
		members  []member
		serves   [][2]string // control plane → served
	}{
		{
			name: "primary-remote", topology: "primary-remote",
			members: []member{
				{"east", "primary", "network1", "east", []string{"west", "south"}},
				{"west", "remote", "network2", "east", nil},
				{"south", "remote", "network1", "east", nil},
			},
			serves: [][2]string{{"east", "west"}, {"east", "south"}},
		},
		{
			name: "external-control-plane", topology: "external-control-plane",
			members: []member{
				{"hub", "control-plane", "network1", "hub", []string{"dp1", "dp2"}},
				{"dp1", "data-plane", "network1", "hub", nil},
				{"dp2", "data-plane", "network2", "hub", nil},
			},
			serves: [][2]string{{"hub", "dp1"}, {"hub", "dp2"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := dashboard.New(dashboard.Options{Token: hubToken, API: staticAPI(tc.topology, tc.members, nil), Refresh: time.Second})
			ts := httptest.NewTLSServer(d)
			t.Cleanup(func() { d.Close(); ts.Close() })
			caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
			b := browser(t, ts.URL, caPEM)
			signIn(t, b, ts.URL, hubToken)
			for _, m := range tc.members {
				waitFor(t, b, 30*time.Second, "cluster "+m.name+" as "+m.role,
					jsCount(fmt.Sprintf(`.node.role-%s[data-cluster=%q]`, m.role, m.name))+" === 1")
				for _, r := range m.reads {
					waitFor(t, b, 5*time.Second, m.name+" reads "+r, linkShown(m.name, r, "ok"))
				}
			}
			for _, s := range tc.serves {
				waitFor(t, b, 5*time.Second, s[0]+" serves "+s[1],
					jsCount(fmt.Sprintf(`path.serves[data-from=%q][data-to=%q]`, s[0], s[1]))+" === 1")
			}
			waitFor(t, b, 5*time.Second, "no other serves arrow", jsCount("path.serves")+fmt.Sprintf(" === %d", len(tc.serves)))
			// The served clusters' cards name their control plane.
			served, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS(fmt.Sprintf(`.cluster-card[data-cluster=%q]`, tc.serves[0][1]))))
			if err != nil {
				t.Fatal(err)
			}
			if want := "istiod of " + tc.serves[0][0]; !strings.Contains(served, want) {
				t.Errorf("card of %s: %q, want %q in it", tc.serves[0][1], served, want)
			}
			screenshot(t, b, "topology-"+tc.name)
		})
	}
}

// TestDashboardRotation: during a root rotation the Trust view shows both
// roots and the phase; a reader token in the last fifth of its lifetime
// turns its links amber in the topology and its row in the Trust view.
func TestDashboardRotation(t *testing.T) {
	now := time.Now().UTC()
	members := []member{
		{"east", "primary", "network1", "east", []string{"west"}},
		{"west", "primary", "network2", "west", []string{"east"}},
	}
	root := func(cn, fp string, years int) map[string]any {
		return map[string]any{"subject": "CN=" + cn + ",O=Istio", "issuer": "CN=" + cn + ",O=Istio", "sha256Fingerprint": fp,
			"notBefore": now.Add(-time.Hour), "notAfter": now.AddDate(years, 0, 0)}
	}
	trust := map[string]any{
		"ca": map[string]any{
			"source": "generated", "rootKeyStored": true, "rootRotation": "trust-both",
			"roots":         []any{root("Root CA", "AA:AA", 9), root("Root CA", "BB:BB", 10)},
			"intermediates": map[string]any{},
		},
		"readers": []any{
			// west's token: 100 days lifetime, 10 left.
			map[string]any{"cluster": "west", "heldBy": []string{"east"}, "issuedAt": now.Add(-90 * 24 * time.Hour), "expiresAt": now.Add(10 * 24 * time.Hour)},
			map[string]any{"cluster": "east", "heldBy": []string{"west"}, "issuedAt": now, "expiresAt": now.Add(365 * 24 * time.Hour)},
		},
	}
	d := dashboard.New(dashboard.Options{Token: hubToken, API: staticAPI("multi-primary", members, trust), Refresh: time.Second})
	ts := httptest.NewTLSServer(d)
	t.Cleanup(func() { d.Close(); ts.Close() })
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	b := browser(t, ts.URL, caPEM)
	signIn(t, b, ts.URL, hubToken)
	waitFor(t, b, 30*time.Second, "east reads west: token expires soon", linkShown("east", "west", "expiring"))
	waitFor(t, b, 5*time.Second, "west reads east: authenticates", linkShown("west", "east", "ok"))
	show(t, b, "trust")
	waitFor(t, b, 5*time.Second, "the rotation phase", `document.querySelector('#rotation-phase[data-phase="trust-both"]') !== null`)
	waitFor(t, b, 5*time.Second, "both roots", jsCount(`#roots tr[data-root="AA:AA"]`)+" === 1 && "+jsCount(`#roots tr[data-root="BB:BB"]`)+" === 1")
	waitFor(t, b, 5*time.Second, "west's reader token flagged", jsCount(`#readers tr.warning[data-cluster="west"]`)+" === 1 && "+jsCount(`#readers tr.ok[data-cluster="east"]`)+" === 1")
	screenshot(t, b, "trust-rotation")
}
