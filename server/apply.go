package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/gateways"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// ApplyOptions change how Apply converges.
type ApplyOptions struct {
	// DryRun validates every write on the API servers and persists nothing,
	// neither in the clusters nor in the state.
	DryRun bool
	// CACertsPolicy says what to do with a cacerts flotilla did not write.
	CACertsPolicy pki.ConflictPolicy
}

// Step is the outcome of one step of an apply, in one cluster or mesh-wide.
type Step struct {
	Cluster string `json:"cluster,omitempty"`
	Step    string `json:"step"`
	// Action is what happened: created, updated, unchanged, issued, failed...
	Action string `json:"action"`
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

// ApplyReport is the outcome of one apply.
type ApplyReport struct {
	// ID is the apply's journal entry (0 for dry runs, which are not journaled).
	ID       uint64        `json:"id,omitempty"`
	DryRun   bool          `json:"dryRun,omitempty"`
	SpecHash string        `json:"specHash"`
	Duration time.Duration `json:"durationNanos"`
	Steps    []Step        `json:"steps"`
}

// Failed returns the steps that failed.
func (r *ApplyReport) Failed() []Step {
	var out []Step
	for _, s := range r.Steps {
		if s.Error != "" {
			out = append(out, s)
		}
	}
	return out
}

// Err summarizes the failures, naming each cluster and step; nil when none failed.
func (r *ApplyReport) Err() error {
	failed := r.Failed()
	if len(failed) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d step(s) failed:", len(failed))
	for _, s := range failed {
		where := s.Cluster
		if where == "" {
			where = "mesh"
		}
		fmt.Fprintf(&b, "\n  %s: %s: %s", where, s.Step, s.Error)
	}
	return errors.New(b.String())
}

// Changes counts the steps that changed something.
func (r *ApplyReport) Changes() int {
	n := 0
	for _, s := range r.Steps {
		switch s.Action {
		case "unchanged", "skipped", "none", "validated", "":
		default:
			if s.Error == "" {
				n++
			}
		}
	}
	return n
}

type recorder struct {
	h      *Hub
	id     uint64
	mu     sync.Mutex
	steps  []Step
	dryRun bool
}

func (r *recorder) add(ctx context.Context, s Step) {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
	line := s.Step + ": " + s.Action
	if s.Detail != "" {
		line += " (" + s.Detail + ")"
	}
	if s.Error != "" {
		line += ": " + s.Error
	}
	r.h.progressf(s.Cluster, "%s", line)
	if r.id == 0 {
		return
	}
	result := s.Action
	if s.Error != "" {
		result = "failed"
	}
	// The journal is best effort: a failed journal write must not fail the apply.
	_ = r.h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.AddApplyStep(r.id, state.StepRecord{Cluster: s.Cluster, Step: s.Step, Result: result, Error: s.Error, End: r.h.now()})
	})
}

// failedClusters lists the clusters whose step failed, sorted.
func (r *recorder) failedClusters(step string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.steps {
		if s.Step == step && s.Error != "" {
			out = append(out, s.Cluster)
		}
	}
	sort.Strings(out)
	return out
}

func (r *recorder) fail(ctx context.Context, cluster, step string, err error) {
	r.add(ctx, Step{Cluster: cluster, Step: step, Action: "failed", Error: err.Error()})
}

// Apply converges every cluster to m: the mesh's root and each cluster's
// intermediate in cacerts (built-in PKI), namespaces, gateways and Istio
// resources, then the reader accounts and remote secrets. Clusters are worked
// on in parallel; a failure in one cluster stops only the steps that depend on
// it, and the report names every failure. The root is never regenerated once
// the state holds one. A killed apply leaves the state consistent and the
// next apply converges.
func (h *Hub) Apply(ctx context.Context, m *spec.Mesh, o ApplyOptions) (*ApplyReport, error) {
	start := h.now()
	if m == nil {
		var err error
		if m, err = h.StoredMesh(ctx); err != nil {
			return nil, err
		}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if err := spec.CheckInputs(ctx, m, h.Kubeconfig); err != nil {
		return nil, err
	}
	rep := &ApplyReport{DryRun: o.DryRun, SpecHash: m.Hash()}
	rec := &recorder{h: h, dryRun: o.DryRun}
	prev, err := h.StoredMesh(ctx)
	if err != nil && !errors.Is(err, errNoSpec) {
		return nil, fmt.Errorf("state: last applied spec: %w", err)
	}
	var leaving map[string]spec.Cluster
	if o.DryRun {
		err = h.Store.View(ctx, func(tx *state.Tx) error {
			leaving, err = pendingRemovals(tx, prev, m)
			return err
		})
	} else {
		// The new spec and the clusters it drops are recorded together: a
		// removal that fails, or is killed, is retried by the next apply
		// although the spec no longer names the cluster.
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			if leaving, err = pendingRemovals(tx, prev, m); err != nil {
				return err
			}
			if err := putPendingRemovals(tx, leaving); err != nil {
				return err
			}
			if err := tx.PutSpec(m.Canonical(), m.Hash()); err != nil {
				return err
			}
			id, err := tx.AppendApply(state.ApplyRecord{Start: start, SpecHash: m.Hash()})
			rec.id = id
			return err
		})
		rep.ID = rec.id
	}
	if err != nil {
		return nil, fmt.Errorf("state: record apply: %w", err)
	}

	conns, connErrs := h.connect(m, o.DryRun)
	for name, err := range connErrs {
		rec.fail(ctx, name, "connect", err)
	}
	h.removeClusters(ctx, m, leaving, o, rec)

	// cacerts before the control planes: an istiod that starts without its
	// cacerts runs a self-signed CA and keeps it, so the Istio resources
	// that start istiod are written only once every cacerts is in place.
	h.applyPKI(ctx, m, conns, o, rec)
	if missing := rec.failedClusters("cacerts"); len(missing) > 0 {
		rec.add(ctx, Step{Step: "control planes", Action: "skipped",
			Error: fmt.Sprintf("cacerts not written in %s: istiod there would start with a self-signed CA", strings.Join(missing, ", "))})
	} else {
		h.applyControlPlanes(ctx, m, conns, rec)
	}
	// Remote secrets after the namespaces exist (the control planes or
	// cacerts made them).
	h.applyFederation(ctx, m, conns, o, rec)

	rep.Steps = rec.steps
	sort.SliceStable(rep.Steps, func(i, j int) bool { return rep.Steps[i].Cluster < rep.Steps[j].Cluster })
	rep.Duration = h.now().Sub(start)
	if rec.id != 0 {
		result := "succeeded"
		if len(rep.Failed()) > 0 {
			result = fmt.Sprintf("failed: %d step(s)", len(rep.Failed()))
		}
		if err := h.Store.Update(ctx, func(tx *state.Tx) error { return tx.FinishApply(rec.id, h.now(), result) }); err != nil {
			return rep, fmt.Errorf("state: finish apply: %w", err)
		}
	}
	return rep, nil
}

func pkiConfig(m *spec.Mesh) pki.Config {
	return pki.Config{
		KeyAlgorithm:         pki.KeyAlgorithm(m.Spec.PKI.KeyAlgorithm),
		RootLifetime:         m.Spec.PKI.RootTTL.Duration,
		IntermediateLifetime: m.Spec.PKI.IntermediateTTL.Duration,
	}
}

// loadCA returns the stored root (with its key when the state has one) and
// the trust bundle.
func (h *Hub) loadCA(ctx context.Context) (*pki.Root, *pki.Bundle, bool, error) {
	var root *pki.Root
	var bundle *pki.Bundle
	var found bool
	err := h.Store.View(ctx, func(tx *state.Tx) error {
		ca, ok, err := tx.CA()
		if err != nil || !ok {
			return err
		}
		found = true
		// Without the state key (status, check) the root certificate is enough.
		if ca.HasRootKey && h.Store.HasKey() {
			key, err := tx.RootKey()
			if err != nil {
				return err
			}
			if root, err = pki.ImportRoot(ca.RootCertPEM, key, h.now()); err != nil {
				return fmt.Errorf("stored root: %w", err)
			}
		} else if root, err = pki.ImportRootCert(ca.RootCertPEM, h.now()); err != nil {
			return fmt.Errorf("stored root: %w", err)
		}
		bundle, err = pki.ParseBundle(ca.Bundle())
		return err
	})
	return root, bundle, found, err
}

// ensureCA returns the mesh's root, creating it (or importing the spec's)
// only when the state has none.
func (h *Hub) ensureCA(ctx context.Context, m *spec.Mesh, dryRun bool, rec *recorder) (*pki.Root, *pki.Bundle, error) {
	root, bundle, found, err := h.loadCA(ctx)
	if err != nil || found {
		return root, bundle, err
	}
	src := state.CAGenerated
	if r := m.Spec.PKI.Root; r != nil {
		certPEM, err := os.ReadFile(r.CertFile)
		if err != nil {
			return nil, nil, fmt.Errorf("root certificate: %w", err)
		}
		if r.KeyFile != "" {
			keyPEM, err := os.ReadFile(r.KeyFile)
			if err != nil {
				return nil, nil, fmt.Errorf("root key: %w", err)
			}
			root, err = pki.ImportRoot(certPEM, keyPEM, h.now())
			if err != nil {
				return nil, nil, err
			}
		} else if root, err = pki.ImportRootCert(certPEM, h.now()); err != nil {
			return nil, nil, err
		}
		src = state.CAImported
	} else {
		if dryRun {
			rec.add(ctx, Step{Step: "root CA", Action: "would generate", Detail: string(m.Spec.PKI.KeyAlgorithm)})
			return nil, nil, nil
		}
		h.progressf("", "generating the mesh root CA (%s)", m.Spec.PKI.KeyAlgorithm)
		if root, err = pki.NewRoot(pkiConfig(m)); err != nil {
			return nil, nil, err
		}
	}
	bundle = pki.NewBundle(root.Cert)
	if dryRun {
		rec.add(ctx, Step{Step: "root CA", Action: "would import", Detail: pki.Fingerprint(root.Cert)})
		return root, bundle, nil
	}
	var keyPEM []byte
	if root.HasKey() {
		keyPEM = root.Key.Reveal()
	}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		return tx.InitCA(state.CA{RootCertPEM: root.CertPEM, Source: src, UpdatedAt: h.now()}, keyPEM)
	})
	if errors.Is(err, state.ErrCAExists) {
		// Another apply stored one first: use that one, never a second root.
		root, bundle, _, err = h.loadCA(ctx)
		return root, bundle, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("state: store root CA: %w", err)
	}
	action := "generated"
	if src == state.CAImported {
		action = "imported"
	}
	rec.add(ctx, Step{Step: "root CA", Action: action, Detail: pki.Fingerprint(root.Cert)})
	return root, bundle, nil
}

// renewWhenLeft is the share of an intermediate's lifetime left at which
// apply and the reconcile loop issue a new one.
const renewWhenLeft = 5 // 1/5th

// needsRenewal reports whether cert has less than 1/renewWhenLeft of its
// lifetime left at now.
func needsRenewal(notBefore, notAfter, now time.Time) bool {
	life := notAfter.Sub(notBefore)
	return notAfter.Sub(now) < life/renewWhenLeft
}

func (h *Hub) applyPKI(ctx context.Context, m *spec.Mesh, conns map[string]*kube.Cluster, o ApplyOptions, rec *recorder) {
	root, bundle, err := h.ensureCA(ctx, m, o.DryRun, rec)
	if err != nil {
		rec.fail(ctx, "", "root CA", err)
		return
	}
	var wg sync.WaitGroup
	for _, c := range m.Spec.Clusters {
		kc := conns[c.Name]
		ns, ok := caNamespace(m, c.Name)
		if kc == nil || !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch m.Spec.PKI.Mode {
			case spec.PKICertManager:
				err = h.applyCertManager(ctx, m, kc, ns, root, bundle, o, rec)
			default:
				err = h.applyCACerts(ctx, m, kc, ns, root, bundle, o, rec)
			}
			if err != nil {
				rec.fail(ctx, c.Name, "cacerts", err)
			}
		}()
	}
	wg.Wait()
}

// certManagerIssueTimeout bounds the wait for cert-manager to issue a
// cluster's intermediate.
const certManagerIssueTimeout = 2 * time.Minute

// applyCertManager has cert-manager issue the cluster's intermediate under
// the mesh root (or the user's issuer) and projects it into cacerts, so that
// istiod keeps signing with a cert-manager-managed intermediate.
func (h *Hub) applyCertManager(ctx context.Context, m *spec.Mesh, kc *kube.Cluster, ns string, root *pki.Root, bundle *pki.Bundle, o ApplyOptions, rec *recorder) error {
	if root == nil {
		rec.add(ctx, Step{Cluster: kc.Name, Step: "cert-manager intermediate", Action: "would create", Detail: "under the new root"})
		return nil
	}
	cfg := certmanager.Config{
		Cluster:      kc.Name,
		Namespace:    ns,
		KeyAlgorithm: pki.KeyAlgorithm(m.Spec.PKI.KeyAlgorithm),
		Lifetime:     m.Spec.PKI.IntermediateTTL.Duration,
	}
	if cm := m.Spec.PKI.CertManager; cm != nil && cm.IssuerRef != nil {
		cfg.RootIssuer = &certmanager.IssuerRef{Name: cm.IssuerRef.Name, Kind: cm.IssuerRef.Kind}
	}
	if err := certmanager.Apply(ctx, kc, cfg, root); err != nil {
		return err
	}
	if o.DryRun {
		rec.add(ctx, Step{Cluster: kc.Name, Step: "cert-manager intermediate", Action: "validated"})
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, certManagerIssueTimeout)
	defer cancel()
	issued, err := certmanager.WaitReady(wctx, kc, ns, nil)
	if err != nil {
		return fmt.Errorf("%s: waiting for cert-manager to issue the intermediate in %s: %w", kc.Name, ns, err)
	}
	res, err := certmanager.Project(ctx, kc, ns, bundle, o.CACertsPolicy)
	if err != nil {
		return err
	}
	if agent := csrAgentOf(m); agent != nil {
		objs, err := deploy.CSRAgentObjects(deploy.CSRAgentOptions{
			Cluster: kc.Name, Namespace: ns, Image: agent.Image,
			TrustDomain: m.Spec.TrustDomain, TrustBundlePEM: bundle.PEM(),
		})
		if err != nil {
			return err
		}
		applied, err := deploy.ApplyObjects(ctx, kc, objs, nil)
		if err != nil {
			return err
		}
		rec.add(ctx, Step{Cluster: kc.Name, Step: "csr-agent " + ns + "/" + csragent.ServiceName, Action: h.controlPlaneAction(ctx, kc.Name+"/csr-agent", applied, false),
			Detail: fmt.Sprintf("%d objects, global.caAddress %s", len(applied), csragent.Address(ns))})
	}
	detail := "issued by cert-manager"
	if issued != nil && issued.Cert != nil {
		detail += ", expires " + issued.Cert.NotAfter.UTC().Format(time.DateOnly)
	}
	rec.add(ctx, Step{Cluster: kc.Name, Step: "cacerts " + ns + "/" + pki.SecretName, Action: string(res.Action), Detail: detail})
	return nil
}

// applyCACerts makes sure the cluster has an intermediate in the state and
// the matching cacerts in the cluster. The intermediate is stored before
// cacerts is written, so a kill in between leaves nothing the next apply
// cannot converge.
func (h *Hub) applyCACerts(ctx context.Context, m *spec.Mesh, kc *kube.Cluster, ns string, root *pki.Root, bundle *pki.Bundle, o ApplyOptions, rec *recorder) error {
	name := kc.Name
	if root == nil {
		rec.add(ctx, Step{Cluster: name, Step: "cacerts", Action: "would create", Detail: "intermediate under the new root"})
		return nil
	}
	in, err := h.storedIntermediate(ctx, name, ns)
	if err != nil {
		return fmt.Errorf("state: intermediate: %w", err)
	}
	if in != nil && !bundle.Contains(root.Cert) {
		return errors.New("stored root is not in the trust bundle")
	}
	if in != nil && in.Cert.CheckSignatureFrom(root.Cert) != nil {
		in = nil // issued under an earlier root: issue anew under the current one
	}
	if in != nil && root.HasKey() && issuedForOtherNamespace(in.Cert.DNSNames, ns) {
		in = nil // the control-plane namespace or the cluster's role changed
	}
	issued := ""
	if in == nil || needsRenewal(in.Cert.NotBefore, in.Cert.NotAfter, h.now()) {
		if !root.HasKey() {
			return errors.New("no intermediate and the root is offline: run flotilla ca csr, sign, then flotilla ca accept")
		}
		if o.DryRun {
			rec.add(ctx, Step{Cluster: name, Step: "cacerts", Action: "would issue", Detail: "new intermediate"})
			return nil
		}
		reason := "new"
		if in != nil {
			reason = "renewal"
		}
		if in, err = root.IssueIntermediate(name, ns, pkiConfig(m)); err != nil {
			return err
		}
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			return tx.PutIntermediate(name, in.CertPEM, in.Key.Reveal())
		})
		if err != nil {
			return fmt.Errorf("state: store intermediate: %w", err)
		}
		issued = reason
	}
	cc, err := pki.NewCACerts(in, root, bundle)
	if err != nil {
		return err
	}
	res, err := pki.WriteCACerts(ctx, kc, ns, cc, o.CACertsPolicy)
	if err != nil {
		return err
	}
	if res.Adopted != nil && !o.DryRun {
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			return tx.PutIntermediate(name, res.Adopted.CertPEM, res.Adopted.Key.Reveal())
		})
		if err != nil {
			return fmt.Errorf("state: store adopted intermediate: %w", err)
		}
	}
	detail := "intermediate expires " + in.Cert.NotAfter.UTC().Format(time.DateOnly)
	if issued != "" {
		detail = issued + " intermediate, " + detail
	}
	rec.add(ctx, Step{Cluster: name, Step: "cacerts " + ns + "/" + pki.SecretName, Action: string(res.Action), Detail: detail})
	return nil
}

// issuedForOtherNamespace reports whether an intermediate's SANs name the
// istiod of a namespace other than ns. One naming no istiod (adopted, or
// signed elsewhere) is kept.
func issuedForOtherNamespace(dnsNames []string, ns string) bool {
	for _, n := range dnsNames {
		if other, ok := strings.CutPrefix(n, "istiod."); ok {
			if other, ok = strings.CutSuffix(other, ".svc"); ok && !strings.Contains(other, ".") {
				return other != ns
			}
		}
	}
	return false
}

// DeployOptions are the control-plane settings of m (also used to render).
func DeployOptions(m *spec.Mesh) deploy.Options {
	o := deploy.Options{
		MeshID:    m.Spec.MeshID,
		Version:   istioVersion(m),
		Namespace: m.Spec.ControlPlaneNamespace,
		Exposure:  map[string]gateways.Exposure{},
	}
	if csrAgentOf(m) != nil {
		// istiod's own CA off; istiod and the proxies ask the csr-agent.
		o.Values = csragent.IstioValues(m.Spec.ControlPlaneNamespace)
	}
	for _, c := range m.Spec.Clusters {
		e := gateways.Exposure{Type: coreServiceType(c.Gateway.ServiceType), Address: c.Gateway.Address}
		if c.Gateway.NodePort != 0 {
			e.NodePorts = map[string]int32{"tls": c.Gateway.NodePort}
		}
		o.Exposure[c.Name] = e
	}
	return o
}

func (h *Hub) applyControlPlanes(ctx context.Context, m *spec.Mesh, conns map[string]*kube.Cluster, rec *recorder) {
	if len(conns) != len(m.Spec.Clusters) {
		rec.add(ctx, Step{Step: "control planes", Action: "skipped", Error: "not every cluster is reachable; gateways and Istio resources need them all"})
		return
	}
	opts := DeployOptions(m)
	dry := false
	for _, c := range conns {
		dry = dry || c.DryRun
	}
	opts.AllowPendingAddress = dry
	res, err := deploy.ApplyMesh(ctx, conns, m.Spec.Topology, m.Members(), opts, func(line string) { h.progressf("", "%s", line) })
	if res != nil {
		names := make([]string, 0, len(res.Applied))
		for n := range res.Applied {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			applied := res.Applied[n]
			if dry {
				action, detail := planSummary(applied)
				rec.add(ctx, Step{Cluster: n, Step: "control plane", Action: action, Detail: detail})
				continue
			}
			detail := fmt.Sprintf("%d objects", len(applied))
			if a, ok := res.Addresses[n]; ok && a.Host != "" {
				detail += ", gateway " + a.Host
			}
			rec.add(ctx, Step{Cluster: n, Step: "control plane", Action: h.controlPlaneAction(ctx, n, applied, dry), Detail: detail})
		}
	}
	if err != nil {
		rec.fail(ctx, "", "control planes", err)
	}
}

// planSummary says what a dry run found for one cluster's objects: "would
// change" or "none", with the counts and the objects that would change, e.g.
// "create 1, update 1, none 8: Namespace istio-system (update), Istio default (update)".
// Objects the API server would refuse count as changes (invalid).
func planSummary(applied []deploy.Applied) (string, string) {
	counts := map[string]int{}
	var changes []string
	for _, a := range applied {
		counts[a.Action]++
		if a.Action != deploy.ActionNone {
			changes = append(changes, a.Ref+" ("+a.Action+")")
		}
	}
	detail := fmt.Sprintf("create %d, update %d, none %d", counts[deploy.ActionCreate], counts[deploy.ActionUpdate], counts[deploy.ActionNone])
	if n := counts[deploy.ActionInvalid]; n > 0 {
		detail += fmt.Sprintf(", invalid %d", n)
	}
	if len(changes) == 0 {
		return "none", detail
	}
	return "would change", detail + ": " + strings.Join(changes, ", ")
}

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

func federationOptions(m *spec.Mesh) federation.Options {
	return federation.Options{
		Namespace:     m.Spec.ControlPlaneNamespace,
		AllowLoopback: m.Spec.AllowLoopbackAPIServers,
		Token: federation.TokenOptions{
			Lifetime: m.Spec.Federation.TokenTTL.Duration,
			Legacy:   m.Spec.Federation.LegacyTokenSecret,
		},
	}
}

// federationMesh is m for federation, with the connections in conns. A
// cluster without one (unreachable) gets its kubeconfig instead: federation
// reports it per link and completes the others.
func (h *Hub) federationMesh(m *spec.Mesh, conns map[string]*kube.Cluster) federation.Mesh {
	fm := federation.Mesh{Topology: m.Spec.Topology}
	members := m.Members()
	for i, c := range m.Spec.Clusters {
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

func (h *Hub) applyFederation(ctx context.Context, m *spec.Mesh, conns map[string]*kube.Cluster, o ApplyOptions, rec *recorder) {
	known, err := h.loadCredentials(ctx)
	if err != nil {
		rec.fail(ctx, "", "remote secrets", fmt.Errorf("state: credentials: %w", err))
		return
	}
	fm := h.federationMesh(m, conns)
	res, err := federation.Reconcile(ctx, fm, known, federationOptions(m))
	if err != nil {
		rec.fail(ctx, "", "remote secrets", err)
		return
	}
	for _, t := range res.Targets {
		s := Step{Cluster: t.Cluster, Step: "reader " + t.Account.String(), Action: "unchanged"}
		if t.Renewed != federation.ReasonNone {
			s.Action, s.Detail = "token issued", string(t.Renewed)
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
		return
	}
	// Keep every credential in use, plus the stored ones of clusters that
	// could not be reached this time (still valid, still in their secrets).
	merged := map[string]federation.Credential{}
	for _, c := range known {
		merged[c.Key()] = c
	}
	for _, c := range res.Credentials {
		merged[c.Key()] = c
	}
	inSpec := map[string]bool{}
	for _, c := range m.Spec.Clusters {
		inSpec[c.Name] = true
	}
	var creds []federation.Credential
	for _, c := range merged {
		if inSpec[c.Cluster] {
			creds = append(creds, c)
		}
	}
	sort.Slice(creds, func(i, j int) bool { return creds[i].Key() < creds[j].Key() })
	data, err := json.Marshal(creds)
	if err != nil {
		rec.fail(ctx, "", "remote secrets", err)
		return
	}
	err = h.Store.Update(ctx, func(tx *state.Tx) error {
		if err := tx.PutSecret(credentialsSecret, data); err != nil {
			return err
		}
		for _, c := range res.Credentials {
			tok := state.ReaderToken{ReadBy: readersOf(res.Plan, c.Cluster), IssuedAt: h.now(), ExpiresAt: c.Expiry}
			if err := tx.SetReaderToken(c.Cluster, tok); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		rec.fail(ctx, "", "remote secrets", fmt.Errorf("state: store credentials: %w", err))
	}
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

func coreServiceType(t spec.ServiceType) corev1.ServiceType { return corev1.ServiceType(t) }

// controlPlaneAction tells "applied" from "unchanged": a no-op server-side
// apply leaves flotilla's managedFields entry as it was, while controllers'
// status writes do not touch it.
func (h *Hub) controlPlaneAction(ctx context.Context, cluster string, applied []deploy.Applied, dryRun bool) string {
	if dryRun {
		return "validated"
	}
	now := map[string]string{}
	for _, a := range applied {
		now[a.Ref] = a.Owned
	}
	key := "controlplane/" + cluster + "/versions"
	var before map[string]string
	changed := true
	err := h.Store.Update(ctx, func(tx *state.Tx) error {
		if ok, err := tx.Value(key, &before); err != nil || !ok {
			return tx.PutValue(key, now)
		}
		changed = !maps.Equal(before, now)
		if changed {
			return tx.PutValue(key, now)
		}
		return nil
	})
	if err != nil || changed {
		return "applied"
	}
	return "unchanged"
}

// pendingRemovalsKey holds the clusters taken out of the spec whose removal
// from the mesh is not done yet, by name, with their spec entries (how to
// reach them).
const pendingRemovalsKey = "pending-removals"

// pendingRemovals are the clusters to take out of the mesh: those still
// pending from earlier applies and those prev has and m has not, less any
// that m names again.
func pendingRemovals(tx *state.Tx, prev, m *spec.Mesh) (map[string]spec.Cluster, error) {
	pending := map[string]spec.Cluster{}
	if _, err := tx.Value(pendingRemovalsKey, &pending); err != nil {
		return nil, fmt.Errorf("read pending removals: %w", err)
	}
	if prev != nil {
		for _, c := range prev.Spec.Clusters {
			pending[c.Name] = c
		}
	}
	for _, c := range m.Spec.Clusters {
		delete(pending, c.Name)
	}
	return pending, nil
}

func putPendingRemovals(tx *state.Tx, pending map[string]spec.Cluster) error {
	if len(pending) == 0 {
		return tx.DeleteValue(pendingRemovalsKey)
	}
	return tx.PutValue(pendingRemovalsKey, pending)
}

// removeClusters takes the clusters in leaving out of the mesh: every secret
// that reads them is deleted, their reader accounts are deleted (which
// revokes the tokens handed out), and the state forgets them. A cluster
// whose removal fails stays pending for the next apply.
func (h *Hub) removeClusters(ctx context.Context, m *spec.Mesh, leaving map[string]spec.Cluster, o ApplyOptions, rec *recorder) {
	if len(leaving) == 0 {
		return
	}
	gone := slices.Sorted(maps.Keys(leaving))
	if o.DryRun {
		for _, name := range gone {
			rec.add(ctx, Step{Cluster: name, Step: "remove from mesh", Action: "would remove"})
		}
		return
	}
	// The mesh as it was: the spec's clusters and the leaving ones.
	was := *m
	was.Spec.Clusters = slices.Clone(m.Spec.Clusters)
	for _, name := range gone {
		was.Spec.Clusters = append(was.Spec.Clusters, leaving[name])
	}
	conns, connErrs := h.connect(&was, false)
	for _, name := range gone {
		if err := connErrs[name]; err != nil {
			rec.fail(ctx, name, "connect (removal)", err)
		}
	}
	fm := h.federationMesh(&was, conns)
	for _, name := range gone {
		if connErrs[name] != nil {
			continue
		}
		res, err := federation.Remove(ctx, fm, name, federationOptions(&was))
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("%w (retried by the next apply)", err))
			continue
		}
		detail := fmt.Sprintf("%d secret(s) deleted, %d account(s) revoked", len(res.Secrets), len(res.Revoked))
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			pending := map[string]spec.Cluster{}
			if _, err := tx.Value(pendingRemovalsKey, &pending); err != nil {
				return err
			}
			delete(pending, name)
			if err := putPendingRemovals(tx, pending); err != nil {
				return err
			}
			return tx.DeleteCluster(name)
		})
		if err != nil {
			rec.fail(ctx, name, "remove from mesh", fmt.Errorf("state: %w", err))
			continue
		}
		rec.add(ctx, Step{Cluster: name, Step: "remove from mesh", Action: "removed", Detail: detail})
	}
}

// csrAgentOf returns the csr-agent settings when m runs the istio-csr style signer.
func csrAgentOf(m *spec.Mesh) *spec.CSRAgent {
	if m.Spec.PKI.Mode != spec.PKICertManager || m.Spec.PKI.CertManager == nil {
		return nil
	}
	return m.Spec.PKI.CertManager.CSRAgent
}
