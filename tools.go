//go:build tools

// Package flotilla pins the dependencies chosen for the product while the
// packages that use them are being written, so that go mod tidy keeps them.
package flotilla

import (
	_ "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	_ "github.com/cloudflare/cfssl/csr"
	_ "github.com/cloudflare/cfssl/initca"
	_ "github.com/cloudflare/cfssl/signer/local"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "github.com/spf13/viper"
	_ "go.etcd.io/bbolt"
	_ "google.golang.org/grpc"
	_ "istio.io/api/security/v1alpha1"
	_ "istio.io/client-go/pkg/clientset/versioned"
	_ "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	_ "k8s.io/client-go/kubernetes"
	_ "sigs.k8s.io/yaml"
)
