//go:build tools

// Package upstream pins the upstream Kubernetes, etcd and kwok commands that the
// lab builds. It lives in a module of its own so that k8s.io/kubernetes never
// enters the product's go.mod.
package upstream

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
