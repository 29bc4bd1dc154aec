package federation

import (
	"bytes"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flotillamesh/flotilla/deploy"
)

const (
	// MultiClusterLabel marks the secrets istiod watches for remote clusters.
	MultiClusterLabel = "istio/multiCluster"
	// ClusterAnnotation names the cluster a remote secret reads.
	ClusterAnnotation = "networking.istio.io/cluster"
	// ControlPlaneClustersAnnotation, on a remote's control-plane namespace,
	// names the primary that manages it.
	ControlPlaneClustersAnnotation = deploy.ControlPlaneClustersAnnotation
	// ConfigSecretName is the secret an external istiod loads its config
	// cluster's kubeconfig from; its one key is ConfigSecretKey.
	ConfigSecretName = "istio-kubeconfig"
	ConfigSecretKey  = "config"
)

// RemoteSecretName is the name of the secret that reads cluster.
func RemoteSecretName(cluster string) string { return "istio-remote-secret-" + cluster }

// SecretName is the name of the secret of a link of kind k to cluster.
func SecretName(k LinkKind, cluster string) string {
	if k == LinkConfig {
		return ConfigSecretName
	}
	return RemoteSecretName(cluster)
}

// SecretKey is the data key of that secret.
func SecretKey(k LinkKind, cluster string) string {
	if k == LinkConfig {
		return ConfigSecretKey
	}
	return cluster
}

// Endpoint is how a reader reaches a cluster's API server.
type Endpoint struct {
	// Server is the https URL written into kubeconfigs.
	Server string
	// CAData is the PEM bundle the server's certificate chains to; empty
	// trusts the reader's system roots.
	CAData []byte
	// TLSServerName overrides the name checked against the server's
	// certificate, for an address the certificate does not name.
	TLSServerName string
	// Gateway is the east-west gateway (host:port) Server names when the
	// API server is reached through it; "" for a direct path. Not written
	// into kubeconfigs: Server says it.
	Gateway string
}

// Kubeconfig builds the kubeconfig istiod uses to read cluster: one cluster,
// user and context, all named after the cluster, as istioctl writes it.
func Kubeconfig(cluster string, ep Endpoint, token string) ([]byte, error) {
	if err := checkKubeconfigInputs(cluster, ep, token); err != nil {
		return nil, err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{
		Server:                   ep.Server,
		CertificateAuthorityData: ep.CAData,
		TLSServerName:            ep.TLSServerName,
	}
	cfg.AuthInfos[cluster] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[cluster] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: cluster}
	cfg.CurrentContext = cluster
	if err := clientcmd.Validate(*cfg); err != nil {
		return nil, fmt.Errorf("kubeconfig for %s: %w", cluster, err)
	}
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig for %s: %w", cluster, err)
	}
	return out, nil
}

// desiredSecret is a link's secret as it should be stored.
type desiredSecret struct {
	Namespace, Name, Key, Cluster string
	Kubeconfig                    []byte
}

func (d desiredSecret) labels() map[string]string {
	return map[string]string{MultiClusterLabel: "true", ManagedByLabel: ManagedByValue}
}

func (d desiredSecret) annotations() map[string]string {
	return map[string]string{ClusterAnnotation: d.Cluster}
}

func (d desiredSecret) apply() *corev1ac.SecretApplyConfiguration {
	return corev1ac.Secret(d.Name, d.Namespace).
		WithLabels(d.labels()).
		WithAnnotations(d.annotations()).
		WithType(corev1.SecretTypeOpaque).
		WithData(map[string][]byte{d.Key: d.Kubeconfig})
}

// matches reports whether s already is d, so that the write can be skipped
// and its resourceVersion stays.
func (d desiredSecret) matches(s *corev1.Secret) bool {
	if s == nil || s.Type != corev1.SecretTypeOpaque || len(s.Data) != 1 || !bytes.Equal(s.Data[d.Key], d.Kubeconfig) {
		return false
	}
	for k, v := range d.labels() {
		if s.Labels[k] != v {
			return false
		}
	}
	for k, v := range d.annotations() {
		if s.Annotations[k] != v {
			return false
		}
	}
	return true
}
