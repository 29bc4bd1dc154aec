// Package federation lets istiod in one cluster read others: given which
// cluster holds a secret for which (the links of deploy's compiled layout),
// it creates the reader
// accounts and their RBAC in the read clusters, mints and renews their
// tokens, writes the remote secrets in Istio's exact format
// (istio-remote-secret-<cluster>, or istio-kubeconfig for an external
// istiod's config cluster), prunes stale ones, and revokes a cluster's
// credentials when it leaves the mesh.
//
// Reconcile is the entry point of the apply engine and of the hub's loop;
// it is idempotent when given back the credentials it returned.
package federation
