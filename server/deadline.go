package server

import (
	"time"

	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// DefaultRequestTimeout bounds every request to a cluster's API server: an
// API server that answers slowly or not at all fails that cluster's steps,
// named, instead of holding the whole apply (and the hub's one apply slot)
// forever. Waits that poll (gateway addresses, cert-manager) have their own
// deadlines on top.
const DefaultRequestTimeout = time.Minute

func (h *Hub) requestTimeout() time.Duration {
	if h.RequestTimeout > 0 {
		return h.RequestTimeout
	}
	return DefaultRequestTimeout
}

// withRequestTimeout rebuilds kc's clients with the hub's request timeout,
// unless its config already has one.
func (h *Hub) withRequestTimeout(kc *kube.Cluster) (*kube.Cluster, error) {
	if kc.Config == nil || kc.Config.Timeout > 0 {
		return kc, nil
	}
	cfg := rest.CopyConfig(kc.Config)
	cfg.Timeout = h.requestTimeout()
	return kube.Connect(kc.Name, cfg)
}
