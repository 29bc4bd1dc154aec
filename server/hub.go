// Package server is flotilla's hub: the engine that converges clusters to a
// mesh spec (apply, plan, status, check) over the bbolt state, and the
// long-running server that exposes it over HTTP and reconciles on a timer.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// DefaultIstioVersion is the Sail Operator version used when the spec names none.
const DefaultIstioVersion = "v1.30.3"

// Hub converges member clusters to a mesh spec, keeping what it must
// remember (CA material, tokens, the journal) in its state.
type Hub struct {
	// Store is the open state; the hub does not close it.
	Store *state.Store
	// Kubeconfig is the kubeconfig clusters are reached through ("" means
	// $KUBECONFIG or ~/.kube/config), unless a cluster names its own.
	Kubeconfig string
	// Progress receives one line per step as it happens; nil discards them.
	Progress io.Writer
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Connect opens a cluster connection; nil uses the kubeconfig.
	Connect func(c spec.Cluster, kubeconfig string) (*kube.Cluster, error)
	// Inputs bounds the files and kubeconfigs a spec may make the hub use.
	Inputs InputPolicy
	// RequestTimeout bounds each request to a cluster's API server
	// (DefaultRequestTimeout when zero).
	RequestTimeout time.Duration
	// Hook, when set, is called at every step of an apply as it happens:
	// each progress line, and each journal entry once written. The crash
	// test kills the process from it, at a point of the apply's own.
	Hook func(point string)
	// SupersededGrace is how long a renewed reader token stands in the
	// remote secrets before an apply revokes the one it replaced
	// (DefaultSupersededGrace when zero).
	SupersededGrace time.Duration

	mu sync.Mutex // serializes progress lines from parallel steps
}

func (h *Hub) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Hub) progressf(cluster, format string, args ...any) {
	if h.Progress == nil && h.Hook == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	prefix := "mesh"
	if cluster != "" {
		prefix = cluster
	}
	line := fmt.Sprintf(format, args...)
	if h.Progress != nil {
		fmt.Fprintf(h.Progress, "%-10s %s\n", prefix+":", line)
	}
	if h.Hook != nil {
		h.Hook(prefix + ": " + line)
	}
}

// connect opens a connection to every cluster of the spec; the failures come
// back by cluster so that the others can go on.
func (h *Hub) connect(clusters []spec.Cluster, dryRun bool) (map[string]*kube.Cluster, map[string]error) {
	conns := map[string]*kube.Cluster{}
	errs := map[string]error{}
	for _, c := range clusters {
		var kc *kube.Cluster
		var err error
		if h.Connect != nil {
			kc, err = h.Connect(c, h.Kubeconfig)
		} else {
			kc, err = kube.FromKubeconfig(c.Name, c.KubeconfigFor(h.Kubeconfig), c.Context)
			if err == nil {
				err = h.Inputs.admitConnection(c, h.Kubeconfig, kc)
			}
			if err == nil {
				kc, err = h.withRequestTimeout(kc)
			}
		}
		if err != nil {
			errs[c.Name] = err
			continue
		}
		kc.DryRun = dryRun
		conns[c.Name] = kc
	}
	return conns, errs
}

// Engine is what the CLI drives: a Hub on the local state, or a Client of a
// running hub. A nil spec means the spec of the last apply.
type Engine interface {
	Apply(ctx context.Context, m *spec.Mesh, o ApplyOptions) (*ApplyReport, error)
	Status(ctx context.Context, m *spec.Mesh) (*Status, error)
	Check(ctx context.Context, m *spec.Mesh) ([]Check, error)
	Verify(ctx context.Context, m *spec.Mesh, o VerifyOptions) (*VerifyResult, error)
	RotateReaders(ctx context.Context, m *spec.Mesh, o ReaderRotationOptions) (*ReaderRotation, error)
}

var _ Engine = (*Hub)(nil)

// meshOrStored is m, or when m is nil (a reconcile, or a client that sent
// no spec) the spec of the last apply.
func (h *Hub) meshOrStored(ctx context.Context, m *spec.Mesh) (*spec.Mesh, error) {
	if m != nil {
		return m, nil
	}
	return h.StoredMesh(ctx)
}

// StoredMesh returns the spec of the last apply from the state.
func (h *Hub) StoredMesh(ctx context.Context) (*spec.Mesh, error) {
	var raw []byte
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		s, ok, err := tx.Spec()
		if err != nil {
			return err
		}
		if !ok {
			return errNoSpec
		}
		raw = s.Raw
		return nil
	})
	if err != nil {
		return nil, err
	}
	return spec.Parse("state", raw)
}

var errNoSpec = errors.New("no mesh has been applied yet: give a spec with -f, or run flotilla apply -f mesh.yaml first")
