//go:build tools

// Package istio pins the Istio module whose istiod (pilot-discovery) and Helm
// charts the lab runs. It is a module of its own: istio.io/istio brings its own
// Kubernetes and gRPC versions, which must stay out of the product's go.mod and
// out of scenarios/upstream's graph.
package istio

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
