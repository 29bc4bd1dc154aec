package federation

import (
	"context"
	"errors"
	"fmt"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RemoveResult reports the removal of one cluster from a mesh.
type RemoveResult struct {
	Cluster string
	// Secrets are the secrets deleted (or that failed to be), in every cluster.
	Secrets []LinkResult
	// Revoked are the accounts deleted in the removed cluster; their tokens
	// are refused from now on.
	Revoked []Account
	// Errs are the failures, each naming its cluster.
	Errs []error
}

// Err joins the failures, nil when the removal is complete.
func (r *RemoveResult) Err() error { return errors.Join(r.Errs...) }

// Remove takes the cluster named name out of m, the mesh as it stands
// before the removal: every secret in the other clusters that reads it is
// deleted (flotilla's or not: a secret to a cluster that left is wrong
// whoever wrote it), the secrets flotilla wrote in it are deleted, and the
// accounts others read it with are deleted, which revokes their tokens.
// The other clusters' work runs in parallel; a failure in one does not
// stop the rest.
func Remove(ctx context.Context, m Mesh, name string, o Options) (*RemoveResult, error) {
	o = o.withDefaults()
	idx := -1
	for i, c := range m.Clusters {
		if c.Name == name {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("cluster %s: not in the mesh", name)
	}
	conns := connectAll(m.Clusters)
	res := &RemoveResult{Cluster: name}
	namespaces := uniq(o.Namespace, o.ExternalNamespace)

	per := make([][]LinkResult, len(m.Clusters))
	errs := make([]error, len(m.Clusters))
	var revoked []Account // written by the removed cluster's worker only
	forEach(len(m.Clusters), o.Parallelism, func(i int) {
		reader := m.Clusters[i].Name
		conn := conns[reader]
		if conn.err != nil {
			errs[i] = conn.err
			return
		}
		c := conn.kube
		for _, ns := range namespaces {
			list, err := c.Kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: MultiClusterLabel + "=true"})
			if err != nil {
				errs[i] = fmt.Errorf("%s: list secrets in %s: %w", reader, ns, err)
				return
			}
			for j := range list.Items {
				s := &list.Items[j]
				target := s.Annotations[ClusterAnnotation]
				leaving := reader == name && s.Labels[ManagedByLabel] == ManagedByValue
				if target != name && !leaving {
					continue
				}
				kind := LinkRemote
				if s.Name == ConfigSecretName {
					kind = LinkConfig
				}
				lr := LinkResult{Link: Link{Reader: reader, Target: target, Kind: kind}, Namespace: s.Namespace, Secret: s.Name, Action: Deleted}
				if err := deleteSecret(ctx, c, s); err != nil {
					lr.Action, lr.Err = Failed, err
					errs[i] = errors.Join(errs[i], err)
				}
				per[i] = append(per[i], lr)
			}
		}
		if reader != name {
			return
		}
		for _, a := range accountsOf(m, name, o) {
			if err := DeleteAccount(ctx, c, a); err != nil {
				errs[i] = errors.Join(errs[i], err)
				continue
			}
			revoked = append(revoked, a)
		}
	})
	res.Revoked = revoked
	for i := range m.Clusters {
		res.Secrets = append(res.Secrets, per[i]...)
		if errs[i] != nil {
			res.Errs = append(res.Errs, errs[i])
		}
	}
	return res, nil
}

// accountsOf lists the accounts through which others may read cluster name:
// those the mesh's plan hands out, and the reader account in both
// namespaces, in case the topology changed since they were made.
func accountsOf(m Mesh, name string, o Options) []Account {
	seen := map[Account]bool{}
	var out []Account
	add := func(a Account) {
		a.Writer = false // not part of the identity
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if layout, o, err := m.layout(o); err == nil {
		plan := NewPlan(layout)
		for _, l := range plan.Targets() {
			if l.Target == name {
				add(o.AccountFor(m.Topology, l, ""))
			}
		}
	}
	for _, ns := range uniq(o.Namespace, o.ExternalNamespace) {
		add(Account{Namespace: ns, Name: ReaderServiceAccount})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Config && !out[j].Config })
	return out
}

func uniq(s ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
