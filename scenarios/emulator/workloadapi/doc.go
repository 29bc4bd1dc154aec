// Package workloadapi is Istio's workload discovery API (istio.workload:
// Address, Workload, Service), which istiod serves to ztunnel over delta
// xDS. workload.pb.go is copied unchanged (Apache-2.0, its license header
// kept) from istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
// pkg/workloadapi, generated there from workloadapi/workload.proto: the
// root module must not require istio.io/istio.
package workloadapi
