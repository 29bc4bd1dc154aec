package server

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/server/spec"
)

// Check is one named diagnosis, in the style of `linkerd multicluster check`.
type Check struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster,omitempty"`
	OK      bool   `json:"ok"`
	Message string `json:"message,omitempty"`
	// Hint says how to fix a failure.
	Hint string `json:"hint,omitempty"`
}

// expiryWarning is how close to expiry an intermediate fails the check.
const expiryWarning = 30 * 24 * time.Hour

// Check diagnoses the mesh: every check runs, each with a fix hint on failure.
func (h *Hub) Check(ctx context.Context, m *spec.Mesh) ([]Check, error) {
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	return h.check(ctx, p)
}

func (h *Hub) check(ctx context.Context, p *plan) ([]Check, error) {
	st, err := h.status(ctx, p)
	if err != nil {
		return nil, err
	}
	return diagnose(p, st, h.now()), nil
}

// Diagnose turns an observed status of mesh m into named checks.
func Diagnose(m *spec.Mesh, st *Status, now time.Time) []Check {
	p, err := compile(m)
	if err != nil {
		return []Check{{Name: "mesh spec valid", Message: err.Error(), Hint: "fix the spec: flotilla apply refuses it too"}}
	}
	return diagnose(p, st, now)
}

func diagnose(p *plan, st *Status, now time.Time) []Check {
	var out []Check
	add := func(c Check) { out = append(out, c) }
	plans := p.planned()
	// Both PKI modes end in a cacerts under the mesh root.
	builtin := true

	roots := map[string][]string{}
	gatewayOf := map[string]string{}
	for _, c := range st.Clusters {
		gatewayOf[c.Name] = c.GatewayAddress
	}
	for _, c := range st.Clusters {
		if !c.Reachable {
			add(Check{Name: "cluster reachable", Cluster: c.Name, Message: c.Error,
				Hint: fmt.Sprintf("check the kubeconfig context of cluster %s and that its API server answers", c.Name)})
			continue
		}
		add(Check{Name: "cluster reachable", Cluster: c.Name, OK: true})
		if c.RootFingerprint != "" {
			roots[c.RootFingerprint] = append(roots[c.RootFingerprint], c.Name)
		}
		caNS, holdsCA := p.caNamespace(c.Name)
		if builtin && holdsCA {
			ck := Check{Name: "intermediate CA valid", Cluster: c.Name}
			switch {
			case c.IntermediateSerial == "":
				ck.Message = fmt.Sprintf("no cacerts in %s", caNS)
				ck.Hint = "run flotilla apply to issue the cluster's intermediate"
			case !c.IntermediateChainValid:
				ck.Message = "cacerts does not form a valid chain to its root-cert.pem"
				ck.Hint = "run flotilla ca rotate intermediate " + c.Name
			case c.IntermediateNotAfter.Sub(now) < expiryWarning:
				ck.Message = "intermediate expires " + c.IntermediateNotAfter.UTC().Format(time.RFC3339)
				ck.Hint = "run flotilla ca rotate intermediate " + c.Name + " (the hub renews it when running)"
			default:
				ck.OK = true
				ck.Message = "expires " + c.IntermediateNotAfter.UTC().Format(time.DateOnly)
			}
			add(ck)
		}
		if holdsCA {
			if ck := crlCheck(st.CRL, c, caNS, now); ck != nil {
				add(*ck)
			}
		}
		nl := Check{Name: "network label", Cluster: c.Name, OK: c.Network == "" || c.NetworkLabel == c.Network}
		if !nl.OK {
			ns := plans[c.Name].Namespace
			nl.Message = fmt.Sprintf("namespace %s has topology.istio.io/network=%q, want %q", ns, c.NetworkLabel, c.Network)
			nl.Hint = "run flotilla apply (or kubectl label namespace " + ns + " topology.istio.io/network=" + c.Network + " --overwrite)"
		}
		add(nl)
		if g := plans[c.Name].Gateway; g != nil {
			gw := Check{Name: "gateway address", Cluster: c.Name, OK: c.GatewayAddress != "", Message: c.GatewayAddress}
			if !gw.OK {
				gw.Message = "service " + g.Namespace + "/" + g.Name + " has no external address"
				gw.Hint = "give the cluster a load balancer, or set gateway.serviceType NodePort or a fixed gateway.address in the spec"
				if g.Ambient {
					gw.Hint = "istiod makes this Service from the Gateway of class " + gateways.EastWestClassName + " (with " + deploy.AmbientMultiNetworkEnv + "=true): check istiod runs, then give the cluster a load balancer or set gateway.serviceType or a fixed gateway.address"
				}
			}
			add(gw)
		}
		if ck := ambientGatewayCheck(c); ck != nil {
			add(*ck)
		}
		var bad []string
		for _, rs := range c.RemoteSecrets {
			if rs.Expected && !rs.Healthy {
				bad = append(bad, fmt.Sprintf("%s (%s)", rs.Name, rs.Error))
			}
		}
		var missing []string
		for _, n := range c.MissingRemoteSecrets {
			missing = append(missing, "secret "+n+" is missing")
		}
		rsCheck := Check{Name: "remote secrets authenticate", Cluster: c.Name, OK: len(bad) == 0 && len(missing) == 0}
		if !rsCheck.OK {
			rsCheck.Message = strings.Join(append(missing, bad...), "; ")
			rsCheck.Hint = "run flotilla apply: it re-issues reader tokens and rewrites the secrets"
		}
		add(rsCheck)
		for _, ck := range pathChecks(p, st, plans, c) {
			add(ck)
		}
		ic := Check{Name: "Istio resource consistent", Cluster: c.Name}
		switch {
		case c.Istio == nil:
			ic.Message = "no Sail Istio resource"
			ic.Hint = "run flotilla apply"
		case c.Istio.MeshID != "" && c.Istio.MeshID != p.MeshID:
			ic.Message = fmt.Sprintf("meshID %q, want %q", c.Istio.MeshID, p.MeshID)
			ic.Hint = "run flotilla apply"
		case c.Istio.Network != "" && c.Network != "" && c.Istio.Network != c.Network:
			ic.Message = fmt.Sprintf("global.network %q, want %q", c.Istio.Network, c.Network)
			ic.Hint = "run flotilla apply"
		case pilotMismatch(plans[c.Name], c.Name, c.Istio.RemotePilotAddress, gatewayOf):
			by := plans[c.Name].AddressOf
			ic.Message = fmt.Sprintf("global.remotePilotAddress %q, want %s's gateway address %s", c.Istio.RemotePilotAddress, by, gatewayOf[by])
			ic.Hint = fmt.Sprintf("run flotilla apply: %s's injection webhook and proxies reach the istiod serving it at that address, through %s's gateway", c.Name, by)
		case cmp.Or(c.Istio.TrustDomain, deploy.DefaultTrustDomain) != cmp.Or(p.TrustDomain, deploy.DefaultTrustDomain):
			// Unset is Istio's default, cluster.local.
			ic.Message = fmt.Sprintf("meshConfig.trustDomain %q, want %q", cmp.Or(c.Istio.TrustDomain, deploy.DefaultTrustDomain), cmp.Or(p.TrustDomain, deploy.DefaultTrustDomain))
			ic.Hint = "run flotilla apply"
		default:
			ic.OK = true
		}
		add(ic)
		if ck := istiodCheck(c); ck != nil {
			add(*ck)
		}
		if ck := istiodCACheck(c); ck != nil {
			add(*ck)
		}
		if ck := istiodTrustDomainCheck(c, cmp.Or(p.TrustDomain, deploy.DefaultTrustDomain)); ck != nil {
			add(*ck)
		}
		if ck := istiodNetworksCheck(c, gatewayNetworks(p, plans, c.Name), p.Layout.Ambient()); ck != nil {
			add(*ck)
		}
		if ck := globalEndpointsCheck(c, st); ck != nil {
			add(*ck)
		}
	}
	if ck := globalServicesCheck(st); ck != nil {
		add(*ck)
	}
	if builtin {
		same := Check{Name: "same root everywhere", OK: len(roots) == 1}
		if st.RootFingerprint != "" && len(roots) == 1 {
			if _, ok := roots[st.RootFingerprint]; !ok {
				same.OK = false
			}
		}
		if !same.OK {
			var parts []string
			for fp, cs := range roots {
				parts = append(parts, fmt.Sprintf("%s: %s", short(fp), strings.Join(cs, ",")))
			}
			same.Message = "roots found: " + strings.Join(parts, "; ")
			if len(roots) == 0 {
				same.Message = "no cluster has a cacerts"
			}
			same.Hint = "cross-cluster mTLS needs one root: run flotilla apply (a foreign cacerts needs --replace-cacerts or --adopt-cacerts)"
		} else {
			same.Message = "root " + short(st.RootFingerprint)
		}
		out = append([]Check{same}, out...)
	}
	return out
}

// crlCheck: once the mesh has revoked an intermediate, the cluster's
// cacerts carries the hub's current ca-crl.pem, whose next-update is not
// close (istiod distributes it; Envoy refuses every peer under an expired
// CRL). nil while nothing is revoked.
func crlCheck(crl *CRLInfo, c ClusterStatus, ns string, now time.Time) *Check {
	if crl == nil {
		return nil
	}
	ck := &Check{Name: "cacerts carries the current CRL", Cluster: c.Name}
	switch {
	case crl.Unenforced != "" && crl.StillTrusted == 0:
		ck.OK = true
		ck.Message = "the revoked intermediates chain to a root the mesh no longer trusts"
	case crl.Unenforced != "":
		// Said rather than hidden: revocation does not reach the data plane.
		ck.Message = fmt.Sprintf("revocation is not enforced: %s (%d revoked intermediate(s) that ca show lists)", crl.Unenforced, crl.StillTrusted)
		ck.Hint = "revoke them at your issuer's CA, or cut them off by rotating that root and dropping the old one from the trust bundle"
	case c.CRLSHA256 == "":
		ck.Message = fmt.Sprintf("secret %s/cacerts has no %s", ns, pki.CRLFile)
		ck.Hint = "run flotilla apply"
	case c.CRLSHA256 != crl.SHA256:
		ck.Message = fmt.Sprintf("secret %s/cacerts holds another %s than the hub's (number %d)", ns, pki.CRLFile, crl.Number)
		ck.Hint = "run flotilla apply"
	case crl.NextUpdate.Sub(now) < pki.DefaultCRLLifetime/4:
		ck.Message = "the root's CRL next update is " + crl.NextUpdate.UTC().Format(time.RFC3339)
		ck.Hint = "run flotilla apply (the hub re-signs it); with an offline root: flotilla ca crl request, sign, flotilla ca crl accept"
	default:
		ck.OK = true
		ck.Message = fmt.Sprintf("CRL number %d, next update %s", crl.Number, crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	return ck
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

// pilotMismatch says whether a cluster served by another's istiod (a
// remote, a data plane) names, as its remotePilotAddress, an address other
// than the serving cluster's gateway, once both are known.
func pilotMismatch(cp gateways.ClusterPlan, cluster, pilot string, gatewayOf map[string]string) bool {
	by := cp.AddressOf
	if by == "" || by == cluster || gatewayOf[by] == "" {
		return false
	}
	return pilot != gatewayOf[by]
}

// gatewayNetworks are the networks whose cross-network gateway the istiod
// of cluster name must know: its own and those of the clusters it reads,
// where such a cluster runs one. Sorted.
func gatewayNetworks(p *plan, plans map[string]gateways.ClusterPlan, name string) []string {
	c, ok := p.Layout.Cluster(name)
	if !ok {
		return nil
	}
	seen := map[string]bool{}
	for _, n := range append([]string{name}, readTargets(c)...) {
		if cp := plans[n]; (cp.GatewayKind == deploy.EastWestGateway || cp.GatewayKind == deploy.AmbientEastWestGateway) && cp.CrossNetwork && cp.Network != "" {
			seen[cp.Network] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

func readTargets(c deploy.Placement) []string {
	out := make([]string, len(c.Reads))
	for i, l := range c.Reads {
		out[i] = l.Target
	}
	return out
}
