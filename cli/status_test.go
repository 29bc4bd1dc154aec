package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/server"
)

// TestPrintStatusLinks: the status table lists, after the clusters, every
// remote secret as a link with its path and health; a mesh without secrets
// prints no links table.
func TestPrintStatusLinks(t *testing.T) {
	st := &server.Status{Mesh: "mesh1", Topology: "multi-primary", Clusters: []server.ClusterStatus{
		{Name: "east", Reachable: true, RemoteSecrets: []server.RemoteSecretStatus{{Name: "istio-remote-secret-west", Namespace: "istio-system", Target: "west", Healthy: true, Path: "via gateway 192.0.2.20:6443"}}},
		{Name: "west", Reachable: true, RemoteSecrets: []server.RemoteSecretStatus{{Name: "istio-remote-secret-east", Namespace: "istio-system", Target: "east", Error: "i/o timeout", Path: "direct https://10.0.0.1:6443"}}},
	}}
	var b bytes.Buffer
	if err := printStatus(&b, st, "table"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"READER  TARGET  PATH",
		"east    west    via gateway 192.0.2.20:6443   istio-system/istio-remote-secret-west  yes",
		"west    east    direct https://10.0.0.1:6443  istio-system/istio-remote-secret-east  no: i/o timeout",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	st.Clusters[0].RemoteSecrets, st.Clusters[1].RemoteSecrets = nil, nil
	if err := printStatus(&b, st, "table"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "READER") {
		t.Errorf("links table without links:\n%s", b.String())
	}
}
