package server

import (
	"testing"

	"github.com/flotillamesh/flotilla/server/spec"
)

// TestCANamespace: a cluster's intermediate goes where the istiod that signs
// with it runs; a data-plane cluster holds none.
func TestCANamespace(t *testing.T) {
	m, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: external-control-plane
  controlPlaneNamespace: mesh-system
  clusters:
  - {name: cp, context: cp, network: n1, role: control-plane}
  - {name: dp, context: dp, network: n1, role: data-plane}
`))
	if err != nil {
		t.Fatal(err)
	}
	pr, err := spec.Parse("mesh.yaml", []byte(`apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  topology: primary-remote
  clusters:
  - {name: east, context: east, network: n1}
  - {name: west, context: west, network: n1, role: remote}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mesh    *spec.Mesh
		cluster string
		ns      string
		holds   bool
	}{
		{m, "cp", "external-istiod", true},
		{m, "dp", "", false},
		{pr, "east", "istio-system", true},
		{pr, "west", "istio-system", true},
	}
	compiled := func(m *spec.Mesh) *plan {
		p, err := compile(m)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range tests {
		ns, holds := compiled(tc.mesh).caNamespace(tc.cluster)
		if ns != tc.ns || holds != tc.holds {
			t.Errorf("%s: caNamespace = %q, %v; want %q, %v", tc.cluster, ns, holds, tc.ns, tc.holds)
		}
	}
	plans := compiled(m).planned()
	if g := plans["cp"].Gateway; g == nil || g.Namespace != "mesh-system" || g.Name != "istio-ingressgateway" {
		t.Errorf("cp's planned gateway = %+v, want the ingress in mesh-system", g)
	}
	if p := plans["dp"]; p.Gateway != nil || p.Namespace != "external-istiod" {
		t.Errorf("dp, single network: gateway %+v, labelled namespace %q; want none and external-istiod", p.Gateway, p.Namespace)
	}
	if p := compiled(pr).planned()["west"]; p.Namespace != "istio-system" || p.Gateway != nil {
		t.Errorf("remote on the primary's network: gateway %+v, labelled namespace %q; want none and istio-system", p.Gateway, p.Namespace)
	}
}

func TestIssuedForOtherNamespace(t *testing.T) {
	tests := []struct {
		names []string
		ns    string
		want  bool
	}{
		{[]string{"istiod.istio-system.svc"}, "istio-system", false},
		{[]string{"istiod.istio-system.svc"}, "external-istiod", true},
		{nil, "istio-system", false},
		{[]string{"ca.example.com"}, "istio-system", false}, // adopted: names no istiod
		{[]string{"istiod.a.b.svc"}, "istio-system", false},
	}
	for _, tc := range tests {
		if got := issuedForOtherNamespace(tc.names, tc.ns); got != tc.want {
			t.Errorf("issuedForOtherNamespace(%v, %s) = %v, want %v", tc.names, tc.ns, got, tc.want)
		}
	}
}

// TestFederatesFirst: remote secrets go in before the Sail resources only
// where an istiod serves a cluster that runs none (primary-remote, external
// control plane); in multi-primary they follow the control planes.
func TestFederatesFirst(t *testing.T) {
	for _, tc := range []struct {
		name, topology, second string
		want                   bool
	}{
		{"multi-primary", "multi-primary", "{name: west, context: west, network: n2}", false},
		{"primary-remote", "primary-remote", "{name: west, context: west, network: n2, role: remote}", true},
		{"external control plane", "external-control-plane", "{name: west, context: west, network: n1, role: data-plane}", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := "{name: east, context: east, network: n1}"
			if tc.topology == "external-control-plane" {
				first = "{name: east, context: east, network: n1, role: control-plane}"
			}
			m, err := spec.Parse("mesh.yaml", []byte("apiVersion: flotilla.dev/v1alpha1\nkind: Mesh\nmetadata: {name: mesh1}\nspec:\n  topology: "+tc.topology+"\n  clusters:\n  - "+first+"\n  - "+tc.second+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			p, err := compile(m)
			if err != nil {
				t.Fatal(err)
			}
			if got := federatesFirst(p.Layout); got != tc.want {
				t.Errorf("federatesFirst = %v, want %v", got, tc.want)
			}
		})
	}
}
