package csragent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's own: requests by gRPC code, their latency, and
// how many are being signed right now.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
	gatherer prometheus.Gatherer
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	var gatherer prometheus.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		gatherer = g
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_csr_agent_requests_total",
			Help: "CreateCertificate calls by gRPC status code.",
		}, []string{"code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flotilla_csr_agent_request_duration_seconds",
			Help:    "CreateCertificate latency by gRPC status code, cert-manager's signing included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"code"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_csr_agent_inflight_requests",
			Help: "CreateCertificate calls in progress.",
		}),
		gatherer: gatherer,
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inflight} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
