// The federation action of Apply: reader accounts, their tokens and the
// remote secrets the topology needs.

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/server/state"
)

// credentialsSecret is where the reader credentials are kept, sealed.
const credentialsSecret = "federation/credentials"

func (h *Hub) loadCredentials(ctx context.Context) ([]federation.Credential, error) {
	var creds []federation.Credential
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		data, ok, err := tx.Secret(credentialsSecret)
		if err != nil || !ok {
			return err
		}
		return json.Unmarshal(data, &creds)
	})
	return creds, err
}

// federationMesh is m for federation, with the connections in conns. A
// cluster without one (unreachable) gets its kubeconfig instead: federation
// reports it per link and completes the others.
func (h *Hub) federationMesh(p *plan, members []deploy.Member, conns map[string]*kube.Cluster) federation.Mesh {
	fm := federation.Mesh{Topology: p.Topology, Layout: p.Layout}
	for i, c := range p.Clusters {
		kubeconfig := c.KubeconfigFor("")
		if conns[c.Name] == nil {
			kubeconfig = c.KubeconfigFor(h.Kubeconfig)
		}
		fm.Clusters = append(fm.Clusters, federation.Cluster{
			Member:     members[i],
			Kube:       conns[c.Name],
			Kubeconfig: kubeconfig,
			Context:    c.Context,
			APIServer:  c.APIServer,
		})
	}
	return fm
}

func (h *Hub) applyFederation(ctx context.Context, p *plan, conns map[string]*kube.Cluster, o ApplyOptions, rec *recorder) {
	res := h.federate(ctx, p, conns, o, nil, rec)
	if res == nil || o.DryRun {
		return
	}
	h.revokeSuperseded(ctx, res, conns, h.supersededGrace(), rec)
}

// federate converges reader accounts, their credentials (renewing those
// of the read clusters in rotate whatever their state) and remote secrets,
// and stores the credentials; nil when it could not run.
func (h *Hub) federate(ctx context.Context, p *plan, conns map[string]*kube.Cluster, o ApplyOptions, rotate map[string]bool, rec *recorder) *federation.Result {
	known, err := h.loadCredentials(ctx)
	if err != nil {
		rec.fail(ctx, "", "remote secrets", fmt.Errorf("state: credentials: %w", err))
		return nil
	}
	if !o.DryRun {
		mine := map[string]*kube.Cluster{}
		for n, kc := range conns {
			if inScope(o.Clusters, n) {
				mine[n] = kc
			}
		}
		h.revokeUntrackedTokens(ctx, mine, rec)
	}
	fm := h.federationMesh(p, p.Layout.Members(), conns)
	paths, errs := gatewayPaths(ctx, p, conns)
	for name, err := range errs {
		rec.fail(ctx, name, "API server gateway path", err)
	}
	for i := range fm.Clusters {
		fm.Clusters[i].Gateway = paths[fm.Clusters[i].Name]
	}
	fo := p.Federation
	fo.Scope = o.Clusters
	fo.Token.Rotate = rotate
	fo.Token.Now = h.now
	if !o.DryRun {
		fo.Token.BeforeMint = h.recordTokenIntent
	}
	res, err := federation.Reconcile(ctx, fm, known, fo)
	if err != nil {
		rec.fail(ctx, "", "remote secrets", err)
		return nil
	}
	for _, t := range res.Targets {
		if t.OutOfScope {
			continue // its own pass reports it; a failure shows on the links
		}
		s := Step{Cluster: t.Cluster, Step: "reader " + t.Account.String(), Action: "unchanged", Detail: "read " + t.Endpoint.Path()}
		if t.Renewed != federation.ReasonNone {
			s.Action, s.Detail = "token issued", string(t.Renewed)+", read "+t.Endpoint.Path()
		}
		if t.Err != nil {
			s.Action, s.Error = "failed", t.Err.Error()
		}
		rec.add(ctx, s)
	}
	for _, l := range res.Links {
		s := Step{Cluster: l.Reader, Step: "secret " + l.Namespace + "/" + l.Secret, Action: string(l.Action), Detail: "reads " + l.Target}
		if l.Err != nil {
			s.Action, s.Error = "failed", l.Err.Error()
		}
		rec.add(ctx, s)
	}
	if o.DryRun {
		return res
	}
	// Keep every credential in use, plus the stored ones of clusters that
	// could not be reached this time (still valid, still in their secrets),
	// merged with what is stored now: passes of other replicas store their
	// clusters' credentials beside these.
	inSpec := map[string]bool{}
	for _, c := range p.Clusters {
		inSpec[c.Name] = true
	}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		var stored []federation.Credential
		data, ok, err := tx.Secret(credentialsSecret)
		if err != nil {
			return err
		}
		if ok {
			if err := json.Unmarshal(data, &stored); err != nil {
				return err
			}
		}
		merged := map[string]federation.Credential{}
		for _, c := range stored {
			merged[c.Key()] = c
		}
		for _, c := range res.Credentials {
			merged[c.Key()] = c
		}
		var creds []federation.Credential
		for _, c := range merged {
			if inSpec[c.Cluster] {
				creds = append(creds, c)
			}
		}
		sort.Slice(creds, func(i, j int) bool { return creds[i].Key() < creds[j].Key() })
		if data, err = json.Marshal(creds); err != nil {
			return err
		}
		if err := tx.PutSecret(credentialsSecret, data); err != nil {
			return err
		}
		for _, c := range res.Credentials {
			tok := state.ReaderToken{ReadBy: readersOf(res.Plan, c.Cluster), IssuedAt: h.now(), ExpiresAt: c.Expiry}
			if err := tx.SetReaderToken(c.Cluster, tok); err != nil {
				return err
			}
		}
		return clearTokenIntents(tx, res.Credentials)
	})
	if err != nil {
		rec.fail(ctx, "", "remote secrets", fmt.Errorf("state: store credentials: %w", err))
		// Not stored: the next apply must not take the old tokens away.
		return nil
	}
	return res
}

// gatewayPaths finds, for each cluster read through its east-west gateway
// (apiServerAccess: gateway), where that gateway exposes the API server:
// its external address and the reachable port of tls-kube-api (the node
// port of a NodePort gateway). A cluster whose gateway has no address yet
// is left out (federation then fails its links, saying so); errs are the
// clusters that could not be read.
func gatewayPaths(ctx context.Context, p *plan, conns map[string]*kube.Cluster) (map[string]*federation.GatewayPath, map[string]error) {
	out, errs := map[string]*federation.GatewayPath{}, map[string]error{}
	plans := p.planned()
	for _, c := range p.Layout.Clusters {
		g, kc := plans[c.Name].Gateway, conns[c.Name]
		if !c.ExposesAPIServer || g == nil || kc == nil {
			continue
		}
		addr, ok, err := gateways.LookupAddress(ctx, kc, g.Namespace, g.Name)
		if err != nil {
			errs[c.Name] = err
			continue
		}
		if ok {
			out[c.Name] = &federation.GatewayPath{Host: addr.Host, Port: addr.Ports[deploy.PortAPIServerName]}
		}
	}
	return out, errs
}

func readersOf(p federation.Plan, target string) string {
	var rs []string
	for _, l := range p.Links {
		if l.Target == target {
			rs = append(rs, l.Reader)
		}
	}
	return strings.Join(rs, ",")
}
