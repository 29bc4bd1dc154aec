package spec

import (
	"errors"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/deploy"
)

// TestParseDataplaneMode: the mesh's dataplaneMode defaults to sidecar and
// each cluster's to the mesh's; what the pinned Istio does not support in
// ambient mode is refused on the line of the field at fault, with the
// reason and the Istio version.
func TestParseDataplaneMode(t *testing.T) {
	mp := "  topology: multi-primary"
	cases := []struct {
		name string
		in   string
		// modes are the members' modes when the spec is valid.
		modes []deploy.DataplaneMode
		// want are substrings of the error, in order.
		want []string
	}{
		{"default sidecar", mesh(with([]string{mp}, twoClusters...)...),
			[]deploy.DataplaneMode{deploy.DataplaneSidecar, deploy.DataplaneSidecar}, nil},
		{"mesh ambient", mesh(with([]string{mp, "  dataplaneMode: ambient"}, twoClusters...)...),
			[]deploy.DataplaneMode{deploy.DataplaneAmbient, deploy.DataplaneAmbient}, nil},
		{"each cluster ambient", mesh(mp, "  clusters:",
			"  - {name: east, context: east, network: n1, dataplaneMode: ambient}",
			"  - {name: west, context: west, network: n2, dataplaneMode: ambient}"),
			[]deploy.DataplaneMode{deploy.DataplaneAmbient, deploy.DataplaneAmbient}, nil},
		{"ambient on a supported Istio", mesh(with([]string{mp, "  dataplaneMode: ambient", "  istio: {version: 1.29.0}"}, twoClusters...)...),
			[]deploy.DataplaneMode{deploy.DataplaneAmbient, deploy.DataplaneAmbient}, nil},
		{"unknown mesh mode", mesh(with([]string{mp, "  dataplaneMode: sidecarless"}, twoClusters...)...), nil,
			[]string{`line 7: spec.dataplaneMode: "sidecarless" is not a dataplane mode (one of sidecar, ambient)`}},
		{"unknown cluster mode", mesh(mp, "  clusters:", "  - {name: east, context: east, network: n1, dataplaneMode: Ambient}"), nil,
			[]string{`line 8: spec.clusters[0].dataplaneMode: "Ambient" is not a dataplane mode`}},
		{"ambient primary-remote", mesh("  topology: primary-remote", "  dataplaneMode: ambient", "  clusters:",
			"  - {name: east, context: east, network: n1}", "  - {name: west, context: west, network: n2, role: remote}"), nil,
			[]string{"line 6: spec.topology: topology primary-remote does not support dataplaneMode ambient (clusters east, west) as of Istio 1.30"}},
		{"ambient external control plane", mesh("  topology: external-control-plane", "  dataplaneMode: ambient", "  clusters:",
			"  - {name: cp, context: cp, network: n1, role: control-plane}", "  - {name: dp, context: dp, network: n1, role: data-plane}"), nil,
			[]string{"spec.topology: topology external-control-plane does not support dataplaneMode ambient", "as of Istio 1.30"}},
		{"mixed, the cluster that differs", mesh(mp, "  clusters:",
			"  - {name: east, context: east, network: n1}",
			"  - {name: west, context: west, network: n2, dataplaneMode: ambient}"), nil,
			[]string{"line 9: spec.clusters[1].dataplaneMode: clusters east are sidecar and west ambient: a mesh mixing the two is not supported as of Istio 1.30"}},
		{"mixed, the mesh's mode inherited", mesh(mp, "  dataplaneMode: ambient", "  clusters:",
			"  - {name: east, context: east, network: n1, dataplaneMode: sidecar}",
			"  - {name: west, context: west, network: n2}"), nil,
			[]string{"line 7: spec.dataplaneMode: clusters east are sidecar and west ambient"}},
		{"ambient on one network", mesh(mp, "  dataplaneMode: ambient", "  clusters:",
			"  - {name: east, context: east, network: net}", "  - {name: west, context: west, network: net}"), nil,
			[]string{`line 10: spec.clusters[1].network: ambient clusters east, west share network "net"`, "only multi-network is supported"}},
		{"ambient API server through the gateway", mesh(mp, "  dataplaneMode: ambient", "  clusters:",
			"  - {name: east, context: east, network: n1, apiServerAccess: gateway}", "  - {name: west, context: west, network: n2}"), nil,
			[]string{"line 9: spec.clusters[0].apiServerAccess: cluster east: apiServerAccess gateway is not supported in ambient mode"}},
		{"ambient with the csr-agent", mesh(with([]string{mp, "  dataplaneMode: ambient", "  pki:", "    mode: cert-manager", "    certManager:", "      csrAgent: {image: example.com/flotilla:1}"}, twoClusters...)...), nil,
			[]string{"line 11: spec.pki.certManager.csrAgent: not supported with dataplaneMode ambient: ztunnel requests its workloads' certificates on their behalf"}},
		{"ambient with a pinned node port", mesh(mp, "  dataplaneMode: ambient", "  clusters:",
			"  - {name: east, context: east, network: n1, gateway: {serviceType: NodePort, nodePort: 31443}}", "  - {name: west, context: west, network: n2}"), nil,
			[]string{"spec.clusters[0].gateway.nodePort: not used in ambient mode"}},
		{"ambient on an old Istio", mesh(with([]string{mp, "  dataplaneMode: ambient", "  istio: {version: 1.28.2}"}, twoClusters...)...), nil,
			[]string{"line 8: spec.istio.version: 1.28.2: ambient multicluster needs Istio 1.29 or later"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse("mesh.yaml", []byte(tc.in))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				for i, mem := range m.Members() {
					if mem.DataplaneMode != tc.modes[i] {
						t.Errorf("member %s: mode %q, want %q", mem.Name, mem.DataplaneMode, tc.modes[i])
					}
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %v, want *spec.Error", err)
			}
			msg, at := err.Error(), 0
			for _, w := range tc.want {
				i := strings.Index(msg[at:], w)
				if i < 0 {
					t.Fatalf("error does not contain %q (after offset %d):\n%s", w, at, msg)
				}
				at += i + len(w)
			}
		})
	}
}

// TestHashSidecarDefault: a spec that says dataplaneMode sidecar means the
// same mesh as one that says nothing, and hashes as specs did before the
// field existed; ambient hashes differently.
func TestHashSidecarDefault(t *testing.T) {
	parse := func(lines ...string) *Mesh {
		t.Helper()
		m, err := Parse("mesh.yaml", []byte(mesh(with(lines, twoClusters...)...)))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	plain := parse("  topology: multi-primary")
	sidecar := parse("  topology: multi-primary", "  dataplaneMode: sidecar")
	ambient := parse("  topology: multi-primary", "  dataplaneMode: ambient")
	if plain.Hash() != sidecar.Hash() {
		t.Errorf("sidecar spelled out hashes %s, unsaid %s", sidecar.Hash(), plain.Hash())
	}
	if strings.Contains(string(plain.Canonical()), "dataplaneMode") {
		t.Errorf("canonical form of a sidecar mesh names dataplaneMode: %s", plain.Canonical())
	}
	if ambient.Hash() == plain.Hash() {
		t.Error("an ambient mesh hashes like a sidecar one")
	}
}
