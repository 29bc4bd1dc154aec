package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the hub's Prometheus metrics, on a registry of its own (no
// process-wide default registry).
type metrics struct {
	registry         *prometheus.Registry
	reconciles       prometheus.Counter
	reconcileErrors  prometheus.Counter
	reconcileChanges prometheus.Counter
	lastReconcile    prometheus.Gauge
	apiApplies       *prometheus.CounterVec
	clusterHealthy   *prometheus.GaugeVec
	intermediateEnd  *prometheus.GaugeVec
	rootEnd          *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_reconciles_total", Help: "Reconciles of the stored mesh spec run by the hub.",
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_reconcile_errors_total", Help: "Reconciles that failed or had a failed step.",
		}),
		reconcileChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_reconcile_changes_total", Help: "Steps of reconciles that changed something (drift repaired, credentials renewed).",
		}),
		lastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_last_reconcile_timestamp_seconds", Help: "When the last reconcile ended, in Unix seconds.",
		}),
		apiApplies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_api_applies_total", Help: "Applies requested through the API.",
		}, []string{"dry_run"}),
		clusterHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_cluster_healthy", Help: "1 when the cluster is reachable, without drift, with a valid intermediate chain and healthy remote secrets; else 0.",
		}, []string{"cluster"}),
		intermediateEnd: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_intermediate_not_after_seconds", Help: "Expiry of the intermediate in the cluster's cacerts, in Unix seconds.",
		}, []string{"cluster"}),
		rootEnd: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_root_not_after_seconds", Help: "Expiry of the root the cluster's cacerts chains to, in Unix seconds.",
		}, []string{"cluster"}),
	}
	m.registry.MustRegister(m.reconciles, m.reconcileErrors, m.reconcileChanges, m.lastReconcile, m.apiApplies,
		m.clusterHealthy, m.intermediateEnd, m.rootEnd,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
