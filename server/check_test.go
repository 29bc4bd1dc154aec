package server

import (
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server/spec"
)

// TestDiagnoseRemoteSecrets: the remote-secret check fails for a secret the
// topology asks for that is missing or does not authenticate, naming it,
// and ignores the health of secrets nobody asked for (drift reports those).
func TestDiagnoseRemoteSecrets(t *testing.T) {
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: multi-primary
  clusters:
  - {name: east, context: east, network: network1}
  - {name: west, context: west, network: network2}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cluster ClusterStatus
		ok      bool
		message string
	}{
		{"healthy", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Healthy: true}}}, true, ""},
		{"missing", ClusterStatus{MissingRemoteSecrets: []string{"istio-system/istio-remote-secret-west"},
			Drift: []string{"secret istio-system/istio-remote-secret-west (reads west) is missing"}}, false, "secret istio-system/istio-remote-secret-west is missing"},
		{"refused", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Error: "401 Unauthorized"}}}, false, "istio-remote-secret-west (401 Unauthorized)"},
		{"unexpected and broken", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{
			{Name: "istio-remote-secret-west", Expected: true, Healthy: true},
			{Name: "istio-remote-secret-north", Error: "no such host"},
		}}, true, ""},
		{"other drift mentioning missing", ClusterStatus{RemoteSecrets: []RemoteSecretStatus{{Name: "istio-remote-secret-west", Expected: true, Healthy: true}},
			Drift: []string{"secret istio-system/cacerts is missing"}}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cluster
			c.Name, c.Reachable, c.Network = "east", true, "network1"
			checks := Diagnose(m, &Status{Clusters: []ClusterStatus{c}}, time.Now())
			var got *Check
			for i := range checks {
				if checks[i].Name == "remote secrets authenticate" {
					got = &checks[i]
				}
			}
			if got == nil {
				t.Fatalf("no remote-secret check in %+v", checks)
			}
			if got.OK != tc.ok || !strings.Contains(got.Message, tc.message) {
				t.Errorf("check = ok %v %q, want ok %v containing %q", got.OK, got.Message, tc.ok, tc.message)
			}
		})
	}
}
