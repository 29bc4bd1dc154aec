package gateways

import (
	"context"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
)

// The tests give topologies and members; these compile them first, as the
// hub does once per request.

func compile(t deploy.Topology, members []deploy.Member, opts deploy.Options) (*deploy.Layout, error) {
	return deploy.Compile(t, members, opts.Namespaces())
}

func planCluster(t deploy.Topology, members []deploy.Member, cluster string, opts deploy.Options, addresses map[string]string) (ClusterPlan, error) {
	l, err := compile(t, members, opts)
	if err != nil {
		return ClusterPlan{}, err
	}
	return PlanCluster(l, cluster, opts, addresses)
}

func planMesh(t deploy.Topology, members []deploy.Member, opts deploy.Options, addresses map[string]string) ([]ClusterPlan, error) {
	l, err := compile(t, members, opts)
	if err != nil {
		return nil, err
	}
	return Plan(l, opts, addresses)
}

func applyMesh(ctx context.Context, clusters map[string]*kube.Cluster, t deploy.Topology, members []deploy.Member, opts deploy.Options, progress func(string)) (*Result, error) {
	l, err := compile(t, members, opts)
	if err != nil {
		return nil, err
	}
	return ApplyMesh(ctx, clusters, l, opts, progress)
}
