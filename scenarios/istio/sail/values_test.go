package sail

import (
	"reflect"
	"testing"
)

func TestIstioValues(t *testing.T) {
	tests := []struct {
		name      string
		revision  string
		namespace string
		profile   string
		user      map[string]any
		want      map[string]any
	}{
		{
			name: "default revision renders revision empty", revision: "default", namespace: "istio-system",
			user: map[string]any{"global": map[string]any{"meshID": "mesh1", "network": "network1"}},
			want: map[string]any{
				"revision": "",
				"global":   map[string]any{"istioNamespace": "istio-system", "configValidation": true, "meshID": "mesh1", "network": "network1"},
				"ztunnel":  map[string]any{"resourceName": "ztunnel"},
			},
		},
		{
			name: "remote profile, defaultRevision dropped as Sail drops it", revision: "external-istiod", namespace: "external-istiod", profile: "remote",
			user: map[string]any{"defaultRevision": "external-istiod", "global": map[string]any{"istioNamespace": "wrong", "remotePilotAddress": "1.2.3.4"}},
			want: map[string]any{
				"profile":  "remote",
				"revision": "external-istiod",
				"global":   map[string]any{"istioNamespace": "external-istiod", "configValidation": true, "remotePilotAddress": "1.2.3.4"},
				"ztunnel":  map[string]any{"resourceName": "ztunnel"},
			},
		},
		{
			name: "user values win over the profile's", revision: "rev1", namespace: "istio-system", profile: "openshift",
			user: map[string]any{"global": map[string]any{"configValidation": false}},
			want: map[string]any{
				"revision": "rev1",
				"global":   map[string]any{"istioNamespace": "istio-system", "configValidation": false, "platform": "openshift"},
				"ztunnel":  map[string]any{"resourceName": "ztunnel"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IstioValues(tt.revision, tt.namespace, tt.profile, tt.user)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestIstioValuesUnknownProfile(t *testing.T) {
	if _, err := IstioValues("default", "istio-system", "nonesuch", nil); err == nil {
		t.Fatal("no error for an unknown profile")
	}
}

func TestIstioValuesLeavesUserValues(t *testing.T) {
	user := map[string]any{"global": map[string]any{"meshID": "m"}, "defaultRevision": "x"}
	if _, err := IstioValues("default", "istio-system", "", user); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"global": map[string]any{"meshID": "m"}, "defaultRevision": "x"}
	if !reflect.DeepEqual(user, want) {
		t.Errorf("user values changed: %v", user)
	}
}

func TestRevisionName(t *testing.T) {
	tests := []struct{ name, strategy, version, want string }{
		{"default", "", "v1.30.3", "default"},
		{"default", "InPlace", "v1.30.3", "default"},
		{"external-istiod", "", "v1.30.3", "external-istiod"},
		{"default", "RevisionBased", "v1.30.3", "default-v1-30-3"},
	}
	for _, tt := range tests {
		if got := RevisionName(tt.name, tt.strategy, tt.version); got != tt.want {
			t.Errorf("RevisionName(%q, %q, %q) = %q, want %q", tt.name, tt.strategy, tt.version, got, tt.want)
		}
	}
}

func TestZTunnelValues(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{
			"profile":         "ambient",
			"defaultRevision": "",
			"global":          map[string]any{"istioNamespace": "istio-system", "configValidation": true},
			"ztunnel":         map[string]any{"resourceName": "ztunnel"},
		}
	}
	tests := []struct {
		name         string
		user, target map[string]any
		want         func(map[string]any)
	}{
		{
			name: "ambient profile always, ztunnel.* also at the top level",
			user: map[string]any{"ztunnel": map[string]any{"multiCluster": map[string]any{"clusterName": "east"}, "network": "network1"}},
			want: func(m map[string]any) {
				m["ztunnel"] = map[string]any{"resourceName": "ztunnel", "multiCluster": map[string]any{"clusterName": "east"}, "network": "network1"}
				m["multiCluster"] = map[string]any{"clusterName": "east"}
				m["network"] = "network1"
			},
		},
		{
			name: "global from the values",
			user: map[string]any{"global": map[string]any{"network": "network2"}},
			want: func(m map[string]any) {
				m["global"].(map[string]any)["network"] = "network2"
			},
		},
		{
			name:   "target Istio's global, meshConfig and revision, the ZTunnel's own values win",
			target: map[string]any{"global": map[string]any{"network": "network1", "meshID": "mesh1"}, "meshConfig": map[string]any{"trustDomain": "td"}, "revision": "canary"},
			user:   map[string]any{"global": map[string]any{"network": "network9"}},
			want: func(m map[string]any) {
				g := m["global"].(map[string]any)
				g["network"], g["meshID"] = "network9", "mesh1"
				m["meshConfig"] = map[string]any{"trustDomain": "td"}
				m["revision"] = "canary"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ZTunnelValues(tt.user, tt.target)
			if err != nil {
				t.Fatal(err)
			}
			want := base()
			tt.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %v\nwant %v", got, want)
			}
		})
	}
}
