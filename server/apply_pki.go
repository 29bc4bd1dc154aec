// The PKI action of Apply: the mesh root, and per cluster its intermediate
// in cacerts (built-in) or issued by cert-manager, and the csr-agent.

package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csragent"
	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

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
func (h *Hub) ensureCA(ctx context.Context, p *plan, dryRun bool, rec *recorder) (*pki.Root, *pki.Bundle, error) {
	root, bundle, found, err := h.loadCA(ctx)
	if err != nil || found {
		return root, bundle, err
	}
	src := state.CAGenerated
	if r := p.PKI.Root; r != nil {
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
			rec.add(ctx, Step{Step: "root CA", Action: "would generate", Detail: string(p.PKI.Config.KeyAlgorithm)})
			return nil, nil, nil
		}
		h.progressf("", "generating the mesh root CA (%s)", p.PKI.Config.KeyAlgorithm)
		if root, err = pki.NewRoot(p.PKI.Config); err != nil {
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

func (h *Hub) applyPKI(ctx context.Context, p *plan, conns map[string]*kube.Cluster, o ApplyOptions, rec *recorder, gate *cacertsGate) {
	root, bundle, err := h.ensureCA(ctx, p, o.DryRun, rec)
	if err != nil {
		rec.fail(ctx, "", "root CA", err)
		gate.doneAll(err)
		return
	}
	if p.PKI.Mode == spec.PKICertManager {
		h.applyCertManagerPKI(ctx, p, conns, root, bundle, o, rec, gate)
		return
	}
	// Built-in: every cluster's intermediate first, then the CRL (which
	// holds one from each of them), then each cacerts.
	active, err := h.crlActive(ctx)
	if err != nil {
		rec.fail(ctx, "", "CRL", err)
		gate.doneAll(err)
		return
	}
	type prepared struct {
		kc     *kube.Cluster
		ns     string
		in     *pki.Intermediate
		issued string
	}
	ready := map[string]*prepared{}
	var mu sync.Mutex
	eachCAHolder(p, conns, o.Clusters, gate, func(kc *kube.Cluster, ns string) {
		in, issued, err := h.ensureIntermediate(ctx, p, kc.Name, ns, root, bundle, active, o, rec)
		switch {
		case err != nil:
			rec.fail(ctx, kc.Name, "cacerts", err)
			gate.done(kc.Name, err)
		case in == nil:
			gate.done(kc.Name, nil) // dry run: would issue
		default:
			mu.Lock()
			ready[kc.Name] = &prepared{kc: kc, ns: ns, in: in, issued: issued}
			mu.Unlock()
		}
	})
	var crl []byte
	var wg sync.WaitGroup
	if root != nil {
		if crl, err = h.ensureCRL(ctx, root, o.DryRun, rec); err != nil {
			rec.fail(ctx, "", "CRL", err)
		}
	}
	for name, pr := range ready {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := err // a CRL that cannot be signed stops every cacerts write
			if err == nil {
				err = h.writeCACerts(ctx, pr.kc, pr.ns, pr.in, pr.issued, root, bundle, crl, o, rec)
			}
			if err != nil {
				rec.fail(ctx, name, "cacerts", err)
			}
			gate.done(name, err)
		}()
	}
	wg.Wait()
}

// eachCAHolder runs f, in parallel, for every cluster of scope (all when
// empty) that holds CA material of its own and is connected, and waits for
// them all. A cluster without cacerts (a data plane) or without a
// connection passes the gate at once.
func eachCAHolder(p *plan, conns map[string]*kube.Cluster, scope []string, gate *cacertsGate, f func(kc *kube.Cluster, ns string)) {
	var wg sync.WaitGroup
	for _, c := range p.Clusters {
		if !inScope(scope, c.Name) {
			continue
		}
		kc := conns[c.Name]
		ns, ok := p.caNamespace(c.Name)
		if kc == nil || !ok {
			gate.done(c.Name, nil) // no cacerts of its own (data plane)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(kc, ns)
		}()
	}
	wg.Wait()
}

// certManagerIssueTimeout bounds the wait for cert-manager to issue a
// cluster's intermediate.
const certManagerIssueTimeout = 2 * time.Minute

// applyCertManagerPKI is the PKI step in cert-manager mode, in the
// built-in mode's order: every cluster's intermediate first (cert-manager
// issues it), then the CRL (which holds one from each of them), then each
// cacerts.
func (h *Hub) applyCertManagerPKI(ctx context.Context, p *plan, conns map[string]*kube.Cluster, root *pki.Root, bundle *pki.Bundle, o ApplyOptions, rec *recorder, gate *cacertsGate) {
	crl, err := h.certManagerCRL(ctx, p, root, bundle, rec)
	if err != nil {
		rec.fail(ctx, "", "CRL", err)
		gate.doneAll(err)
		return
	}
	type prepared struct {
		kc     *kube.Cluster
		ns     string
		issued *certmanager.Issued
	}
	ready := map[string]*prepared{}
	var mu sync.Mutex
	eachCAHolder(p, conns, o.Clusters, gate, func(kc *kube.Cluster, ns string) {
		issued, err := h.prepareCertManager(ctx, p, kc, ns, root, o, rec)
		switch {
		case err != nil:
			rec.fail(ctx, kc.Name, "cacerts", err)
			gate.done(kc.Name, err)
		case issued == nil:
			gate.done(kc.Name, nil) // dry run
		default:
			mu.Lock()
			ready[kc.Name] = &prepared{kc: kc, ns: ns, issued: issued}
			mu.Unlock()
		}
	})
	if crl != nil && len(ready) > 0 {
		inHand := map[string]*certmanager.Issued{}
		for name, pr := range ready {
			inHand[name] = pr.issued
		}
		if _, _, err = crl.sign(ctx, inHand); err != nil {
			rec.fail(ctx, "", "CRL", err)
		}
	}
	var wg sync.WaitGroup
	for name, pr := range ready {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := err // a CRL that cannot be signed stops every cacerts write
			if err == nil {
				err = h.projectCertManager(ctx, p, pr.kc, pr.ns, pr.issued, bundle, crl.source(), o, rec)
			}
			if err != nil {
				rec.fail(ctx, name, "cacerts", err)
			}
			gate.done(name, err)
		}()
	}
	wg.Wait()
}

// prepareCertManager has cert-manager issue the cluster's intermediate
// under the mesh root (or the user's issuer) and returns it; nil (and no
// error) in a dry run.
func (h *Hub) prepareCertManager(ctx context.Context, p *plan, kc *kube.Cluster, ns string, root *pki.Root, o ApplyOptions, rec *recorder) (*certmanager.Issued, error) {
	if root == nil {
		rec.add(ctx, Step{Cluster: kc.Name, Step: "cert-manager intermediate", Action: "would create", Detail: "under the new root"})
		return nil, nil
	}
	cfg := certmanager.Config{
		Cluster:      kc.Name,
		Namespace:    ns,
		KeyAlgorithm: p.PKI.Config.KeyAlgorithm,
		Lifetime:     p.PKI.Config.IntermediateLifetime,
		Mesh:         p.Name,
	}
	if ref := p.PKI.IssuerRef; ref != nil {
		cfg.RootIssuer = &certmanager.IssuerRef{Name: ref.Name, Kind: ref.Kind}
	}
	cmRes, err := certmanager.Apply(ctx, kc, cfg)
	if err != nil {
		return nil, err
	}
	if cmRes.RemovedLegacyRoot {
		action := "deleted"
		if o.DryRun {
			action = "would delete"
		}
		rec.add(ctx, Step{Cluster: kc.Name, Step: "root key " + ns + "/" + certmanager.RootSecretName, Action: action, Detail: "the hub signs as MeshIssuer " + certmanager.MeshIssuerName})
	}
	if o.DryRun {
		rec.add(ctx, Step{Cluster: kc.Name, Step: "cert-manager intermediate", Action: "validated"})
		return nil, nil
	}
	wctx, cancel := context.WithTimeout(ctx, certManagerIssueTimeout)
	defer cancel()
	hub := h.meshIssuer(p.PKI, kc, ns, root)
	if err := h.signWhileWaiting(ctx, wctx, hub); err != nil {
		return nil, err
	}
	issued, err := certmanager.WaitReady(wctx, kc, ns, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: waiting for cert-manager to issue the intermediate in %s: %w", kc.Name, ns, err)
	}
	// A root rotation's new signing root: the intermediate is re-issued under it.
	if issued, _, err = h.reissueUnderRoot(ctx, wctx, hub, ns, root, issued); err != nil {
		return nil, err
	}
	return issued, nil
}

// projectCertManager projects the cluster's intermediate into cacerts, with
// the CRL when crl gives one, so that istiod keeps signing with a
// cert-manager-managed intermediate, and runs the csr-agent.
func (h *Hub) projectCertManager(ctx context.Context, p *plan, kc *kube.Cluster, ns string, issued *certmanager.Issued, bundle *pki.Bundle, crl certmanager.CRLSource, o ApplyOptions, rec *recorder) error {
	res, err := certmanager.ProjectCRL(ctx, kc, ns, bundle, o.CACertsPolicy, crl)
	if err != nil {
		return err
	}
	if agent := p.PKI.CSRAgent; agent != nil {
		objs, err := csragent.Objects(csragent.ManifestOptions{
			Cluster: kc.Name, Namespace: ns, Image: agent.Image,
			TrustDomain: p.TrustDomain, TrustBundlePEM: bundle.PEM(),
		})
		if err != nil {
			return err
		}
		applied, err := deploy.ApplyObjects(ctx, kc.As(kube.ManagerPKI), objs, nil)
		if err != nil {
			return err
		}
		rec.add(ctx, Step{Cluster: kc.Name, Step: "csr-agent " + ns + "/" + csragent.ServiceName, Action: h.controlPlaneAction(ctx, kc.Name+"/csr-agent", applied, false),
			Detail: fmt.Sprintf("%d objects, global.caAddress %s", len(applied), csragent.Address(ns))})
		if !kc.DryRun {
			approver := &csragent.CertificateApprover{Cluster: kc, Namespace: ns}
			if _, err := approver.ApprovePending(ctx); err != nil {
				return err
			}
		}
	}
	detail := "issued by cert-manager"
	if issued != nil && issued.Cert != nil {
		detail += ", expires " + issued.Cert.NotAfter.UTC().Format(time.DateOnly)
	}
	if crl != nil {
		detail += ", with " + pki.CRLFile
	}
	rec.add(ctx, Step{Cluster: kc.Name, Step: "cacerts " + ns + "/" + pki.SecretName, Action: string(res.Action), Detail: detail})
	return nil
}

// ensureIntermediate makes sure the cluster has an intermediate in the
// state, issuing one when it has none, it is due for renewal, or (once the
// mesh revokes) it cannot sign its own CRL. The intermediate is stored
// before cacerts is written, so a kill in between leaves nothing the next
// apply cannot converge. nil (and no error) in a dry run that would issue.
func (h *Hub) ensureIntermediate(ctx context.Context, p *plan, name, ns string, root *pki.Root, bundle *pki.Bundle, crlActive bool, o ApplyOptions, rec *recorder) (*pki.Intermediate, string, error) {
	if root == nil {
		rec.add(ctx, Step{Cluster: name, Step: "cacerts", Action: "would create", Detail: "intermediate under the new root"})
		return nil, "", nil
	}
	in, err := h.storedIntermediate(ctx, name, ns)
	if err != nil {
		return nil, "", fmt.Errorf("state: intermediate: %w", err)
	}
	if in != nil && !bundle.Contains(root.Cert) {
		return nil, "", errors.New("stored root is not in the trust bundle")
	}
	if in != nil && in.Cert.CheckSignatureFrom(root.Cert) != nil {
		in = nil // issued under an earlier root: issue anew under the current one
	}
	if in != nil && root.HasKey() && issuedForOtherNamespace(in.Cert.DNSNames, ns) {
		in = nil // the control-plane namespace or the cluster's role changed
	}
	reason := "renewal"
	if in != nil && crlActive && root.HasKey() && !pki.CanSignCRL(in.Cert) {
		in, reason = nil, "cRLSign for the CRL" // issued before flotilla wrote CRLs
	}
	if in != nil {
		if revoked, err := h.isRevoked(ctx, in.Cert); err != nil || revoked {
			if err != nil {
				return nil, "", err
			}
			in = nil // never hand a revoked serial back
		}
	}
	if in == nil || needsRenewal(in.Cert.NotBefore, in.Cert.NotAfter, h.now()) {
		if !root.HasKey() {
			return nil, "", errors.New("no intermediate and the root is offline: run flotilla ca csr, sign, then flotilla ca accept")
		}
		if o.DryRun {
			rec.add(ctx, Step{Cluster: name, Step: "cacerts", Action: "would issue", Detail: "new intermediate"})
			return nil, "", nil
		}
		if in == nil && reason == "renewal" {
			reason = "new"
		}
		if in, err = root.IssueIntermediate(name, ns, p.PKI.Config); err != nil {
			return nil, "", err
		}
		err = h.Store.Update(ctx, func(tx *state.Tx) error {
			return tx.PutIntermediate(name, in.CertPEM, in.Key.Reveal())
		})
		if err != nil {
			return nil, "", fmt.Errorf("state: store intermediate: %w", err)
		}
		return in, reason, nil
	}
	return in, "", nil
}

// writeCACerts writes the cluster's cacerts: its intermediate, the trust
// bundle and, once the mesh has revoked a CA, the CRL.
func (h *Hub) writeCACerts(ctx context.Context, kc *kube.Cluster, ns string, in *pki.Intermediate, issued string, root *pki.Root, bundle *pki.Bundle, crl []byte, o ApplyOptions, rec *recorder) error {
	name := kc.Name
	cc, err := pki.NewCACerts(in, root, bundle)
	if err != nil {
		return err
	}
	cc.CRL = crl
	res, err := pki.WriteCACerts(ctx, kc, ns, cc, o.CACertsPolicy)
	if err != nil {
		return err
	}
	if res.Adopted != nil && !o.DryRun {
		if revoked, err := h.isRevoked(ctx, res.Adopted.Cert); err != nil || revoked {
			return fmt.Errorf("%s: secret %s/%s: adopted intermediate (serial %s) was revoked when its cluster left the mesh; replace it (--replace-cacerts)",
				name, ns, pki.SecretName, pki.Describe(res.Adopted.Cert).Serial)
		}
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
	if len(crl) > 0 {
		detail += ", with " + pki.CRLFile
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
