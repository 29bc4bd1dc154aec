package server

import (
	"slices"
	"testing"

	"github.com/flotillamesh/flotilla/deploy"
)

// TestMeshIstiods: status keeps the istiods of the mesh, those in the
// namespace of the cluster's cacerts; a control-plane cluster's own istiod
// (istio-system, serving only its ingress gateway) is not one of them.
func TestMeshIstiods(t *testing.T) {
	views := []IstiodView{{Namespace: "external-istiod", Pod: "istiod-external-istiod-1"}, {Namespace: "istio-system", Pod: "istiod-1"}}
	for _, tc := range []struct {
		name  string
		place deploy.Placement
		want  []string
	}{
		{"control-plane cluster keeps the external istiod", deploy.Placement{Member: deploy.Member{Role: deploy.RoleControlPlane}, CANamespace: "external-istiod"}, []string{"istiod-external-istiod-1"}},
		{"primary keeps every istiod", deploy.Placement{Member: deploy.Member{Role: deploy.RolePrimary}, CANamespace: "istio-system"}, []string{"istiod-external-istiod-1", "istiod-1"}},
		{"control-plane cluster without cacerts keeps every istiod", deploy.Placement{Member: deploy.Member{Role: deploy.RoleControlPlane}}, []string{"istiod-external-istiod-1", "istiod-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, v := range meshIstiods(tc.place, views) {
				got = append(got, v.Pod)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("meshIstiods: %v, want %v", got, tc.want)
			}
		})
	}
}
