// Package v1alpha1 is the API of flotilla's cert-manager external issuer,
// group issuer.flotilla.dev: the MeshIssuer kind and its CRD. The types
// are kept apart from the reconciler (pki/issuer), as cert-manager keeps
// pkg/apis apart from its controllers.
//
// A MeshIssuer lives in a member cluster's control-plane namespace. A
// cert-manager Certificate or CertificateRequest names it with
// issuerRef {group: issuer.flotilla.dev, kind: MeshIssuer, name}; the hub,
// which holds the mesh's root key, signs what its policy allows through
// its connection to that cluster. The root key never enters the cluster.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// API group, version and kind.
const (
	Group          = "issuer.flotilla.dev"
	Version        = "v1alpha1"
	MeshIssuerKind = "MeshIssuer"
	// MeshIssuerResource is the plural the CRD serves.
	MeshIssuerResource = "meshissuers"
)

// SchemeGroupVersion is issuer.flotilla.dev/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// MeshIssuerGVK and MeshIssuerGVR name the kind for dynamic clients.
var (
	MeshIssuerGVK = SchemeGroupVersion.WithKind(MeshIssuerKind)
	MeshIssuerGVR = SchemeGroupVersion.WithResource(MeshIssuerResource)
)

// MeshIssuer is the hub signing intermediates for one member cluster.
type MeshIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MeshIssuerSpec   `json:"spec,omitempty"`
	Status MeshIssuerStatus `json:"status,omitempty"`
}

// MeshIssuerSpec says which member cluster the issuer serves. It is what
// humans read: the hub signs by the connection a request arrived through,
// never by what an object in the cluster claims.
type MeshIssuerSpec struct {
	// Cluster is the member cluster's name in the mesh spec.
	Cluster string `json:"cluster"`
	// Mesh is the mesh's name.
	Mesh string `json:"mesh,omitempty"`
}

// MeshIssuerStatus carries the Ready condition, as cert-manager issuers do.
type MeshIssuerStatus struct {
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ConditionReady is the MeshIssuer's one condition.
const ConditionReady = "Ready"

// CRDName is the CustomResourceDefinition's name.
const CRDName = MeshIssuerResource + "." + Group

// CRD is the MeshIssuer CustomResourceDefinition, with a schema strict
// enough that a typo in spec is refused by the API server.
func CRD() *unstructured.Unstructured {
	str := map[string]any{"type": "string"}
	condition := map[string]any{
		"type":     "object",
		"required": []any{"type", "status"},
		"properties": map[string]any{
			"type": str, "status": str, "reason": str, "message": str,
			"lastTransitionTime": map[string]any{"type": "string", "format": "date-time"},
			"observedGeneration": map[string]any{"type": "integer", "format": "int64"},
		},
	}
	schemaProps := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"apiVersion": str, "kind": str,
			"metadata": map[string]any{"type": "object"},
			"spec": map[string]any{
				"type":       "object",
				"required":   []any{"cluster"},
				"properties": map[string]any{"cluster": str, "mesh": str},
			},
			"status": map[string]any{
				"type": "object",
				"properties": map[string]any{"conditions": map[string]any{
					"type":                       "array",
					"items":                      condition,
					"x-kubernetes-list-type":     "map",
					"x-kubernetes-list-map-keys": []any{"type"},
				}},
			},
		},
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": CRDName},
		"spec": map[string]any{
			"group": Group,
			"scope": "Namespaced",
			"names": map[string]any{
				"kind": MeshIssuerKind, "listKind": MeshIssuerKind + "List",
				"plural": MeshIssuerResource, "singular": "meshissuer",
				"categories": []any{"cert-manager"},
			},
			"versions": []any{map[string]any{
				"name": Version, "served": true, "storage": true,
				"schema":       map[string]any{"openAPIV3Schema": schemaProps},
				"subresources": map[string]any{"status": map[string]any{}},
				"additionalPrinterColumns": []any{
					map[string]any{"name": "Cluster", "type": "string", "jsonPath": ".spec.cluster"},
					map[string]any{"name": "Ready", "type": "string", "jsonPath": `.status.conditions[?(@.type=="Ready")].status`},
				},
			}},
		},
	}}
}
