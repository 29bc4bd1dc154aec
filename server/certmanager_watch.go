package server

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/server/spec"
)

// cmWatch keeps, between reconciles, every cluster in cert-manager mode
// that this replica owns served by the hub: its issuer signs requests as cert-manager makes them
// (a renewal does not wait for the next reconcile) and cacerts follows the
// intermediate's Secret within seconds. One watch per cluster, restarted
// when what it depends on (namespace, root, trust bundle, spec) changes.
type cmWatch struct {
	s       *Server
	running map[string]*clusterWatch
}

type clusterWatch struct {
	key    string
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func newCMWatch(s *Server) *cmWatch { return &cmWatch{s: s, running: map[string]*clusterWatch{}} }

// sync starts, restarts and stops watches to match the stored spec and the
// ring: a replica watches the clusters it owns, as it reconciles them.
func (w *cmWatch) sync(ctx context.Context) {
	want := map[string]bool{}
	defer func() {
		for name, cw := range w.running {
			if !want[name] {
				cw.stop()
				delete(w.running, name)
			}
		}
	}()
	h := w.s.hub
	p, err := h.planOf(ctx, nil)
	if err != nil || p.PKI.Mode != spec.PKICertManager {
		return
	}
	root, bundle, found, err := h.loadCA(ctx)
	if err != nil || !found || bundle == nil {
		return
	}
	conns, errs := h.connect(p.Clusters, false)
	for name, err := range errs {
		w.s.log.Warn("cert-manager watch: connect", "cluster", name, "error", err.Error())
	}
	var names []string
	for _, c := range p.Clusters {
		names = append(names, c.Name)
	}
	mine := w.s.owned(names)
	for _, c := range p.Clusters {
		kc := conns[c.Name]
		ns, ok := p.caNamespace(c.Name)
		if kc == nil || !ok || !slices.Contains(mine, c.Name) {
			continue
		}
		want[c.Name] = true
		key := strings.Join(append([]string{p.Hash, ns, pki.Fingerprint(root.Cert)}, bundle.Fingerprints()...), "/")
		if cw := w.running[c.Name]; cw != nil {
			if cw.key == key {
				continue
			}
			cw.stop()
		}
		cctx, cancel := context.WithCancel(ctx)
		cw := &clusterWatch{key: key, cancel: cancel}
		if hub := h.meshIssuer(p.PKI, kc, ns, root); hub != nil {
			hub.Log = w.s.log
			cw.done.Go(func() {
				if err := hub.Run(cctx); err != nil {
					w.s.log.Warn("mesh issuer stopped", "cluster", c.Name, "error", err.Error())
				}
			})
		}
		if p.PKI.CSRAgent != nil {
			// The serving Certificates the hub keeps for the agent and
			// istiod, approved by the hub where cert-manager's default
			// approver is off.
			approver := &csragent.CertificateApprover{Cluster: kc, Namespace: ns, Log: w.s.log}
			cw.done.Go(func() {
				if err := approver.Run(cctx); err != nil {
					w.s.log.Warn("certificate approver stopped", "cluster", c.Name, "error", err.Error())
				}
			})
		}
		log := w.s.log
		// A renewal's cacerts carries the CRL too (with the new
		// intermediate's own); without it istiod would refuse the plug-in CA.
		crl, err := h.certManagerCRL(ctx, p, root, bundle, &recorder{h: h})
		if err != nil {
			log.Warn("cacerts follow: CRL", "cluster", c.Name, "error", err.Error())
		}
		cw.done.Go(func() {
			_ = certmanager.FollowCRL(cctx, kc, ns, bundle, ApplyOptions{}.CACertsPolicy, crl.source(), func(r pki.WriteResult, err error) {
				switch {
				case err != nil:
					log.Warn("cacerts follow", "cluster", c.Name, "error", err.Error())
				case r.Action != pki.Unchanged:
					log.Info("cacerts follows cert-manager's intermediate", "cluster", c.Name, "action", string(r.Action))
				}
			})
		})
		w.running[c.Name] = cw
	}
}

func (cw *clusterWatch) stop() {
	cw.cancel()
	cw.done.Wait()
}

// stop ends every watch.
func (w *cmWatch) stop() {
	for name, cw := range w.running {
		cw.stop()
		delete(w.running, name)
	}
}
