package server

import (
	"context"
	"fmt"
	"sync"
)

// cacertsGate orders one apply: a cluster's Istio resource, which starts
// istiod, is written only once that cluster's cacerts is (an istiod that
// starts without it runs a self-signed CA; one that finds it incomplete
// refuses to start). PKI and the rest of the control plane still run side
// by side until that point.
type cacertsGate struct {
	mu   sync.Mutex
	ch   map[string]chan struct{}
	errs map[string]error
}

func newCACertsGate(clusters []string) *cacertsGate {
	g := &cacertsGate{ch: map[string]chan struct{}{}, errs: map[string]error{}}
	for _, c := range clusters {
		g.ch[c] = make(chan struct{})
	}
	return g
}

// done opens the gate of cluster, with the PKI step's error; the first
// call counts.
func (g *cacertsGate) done(cluster string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch, ok := g.ch[cluster]
	if !ok {
		return
	}
	select {
	case <-ch:
		return
	default:
	}
	g.errs[cluster] = err
	close(ch)
}

// doneAll opens every gate still closed.
func (g *cacertsGate) doneAll(err error) {
	for c := range g.ch {
		g.done(c, err)
	}
}

// wait blocks until cluster's gate opens and fails when its cacerts was
// not written. A cluster the gate does not know passes.
func (g *cacertsGate) wait(ctx context.Context, cluster string) error {
	g.mu.Lock()
	ch, ok := g.ch[cluster]
	g.mu.Unlock()
	if !ok {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.errs[cluster]; err != nil {
		return fmt.Errorf("%s: Istio resource not written: cacerts is not in place (istiod would start without the mesh's CA): %w", cluster, err)
	}
	return nil
}
