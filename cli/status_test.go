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

// TestPrintStatusDataplaneMode: an ambient cluster's role says so in the
// table; a sidecar cluster's (the default) does not; -o json carries the
// mode of every cluster.
func TestPrintStatusDataplaneMode(t *testing.T) {
	st := &server.Status{Mesh: "mesh1", Topology: "multi-primary", Clusters: []server.ClusterStatus{
		{Name: "east", Role: "primary", DataplaneMode: "ambient", Reachable: true},
		{Name: "west", Role: "primary", DataplaneMode: "sidecar"},
	}}
	var b bytes.Buffer
	if err := printStatus(&b, st, "table"); err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, l := range strings.Split(b.String(), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			rows[f[0]] = l
		}
	}
	if !strings.Contains(rows["east"], "primary (ambient)") {
		t.Errorf("east row %q, want role primary (ambient)", rows["east"])
	}
	if !strings.Contains(rows["west"], "primary") || strings.Contains(rows["west"], "(") {
		t.Errorf("west row %q, want role primary alone", rows["west"])
	}
	b.Reset()
	if err := printStatus(&b, st, "json"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"dataplaneMode": "ambient"`, `"dataplaneMode": "sidecar"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status -o json lacks %s:\n%s", want, b.String())
		}
	}
}
