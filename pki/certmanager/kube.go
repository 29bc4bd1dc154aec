package certmanager

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// CheckCRDs fails with ErrCRDsMissing, naming the cluster, when c does not
// serve the cert-manager kinds this mode writes.
func CheckCRDs(ctx context.Context, c *kube.Cluster) error {
	gv := cmapi.SchemeGroupVersion.String()
	list, err := c.Kube.Discovery().ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s: %w: the API server does not serve %s; install cert-manager (CRDs and controllers) in cluster %s, or use pki.mode builtin", c.Name, ErrCRDsMissing, gv, c.Name)
	}
	if err != nil {
		return fmt.Errorf("%s: discover %s: %w", c.Name, gv, err)
	}
	if missing := missingKinds(list.APIResources); len(missing) > 0 {
		return fmt.Errorf("%s: %w: %s lacks %v; install cert-manager's CRDs in cluster %s", c.Name, ErrCRDsMissing, gv, missing, c.Name)
	}
	return nil
}

// CheckIssuer fails with ErrIssuerNotFound when ref does not exist: an
// Issuer in namespace, or a ClusterIssuer.
func CheckIssuer(ctx context.Context, c *kube.Cluster, namespace string, ref IssuerRef) error {
	if err := ref.validate(); err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	gvr, _, err := c.Resource(ctx, gvkOf(ref.kind()))
	if err != nil {
		return err
	}
	ri := c.Dynamic.Resource(gvr)
	var getErr error
	what := fmt.Sprintf("ClusterIssuer %s", ref.Name)
	if ref.kind() == IssuerKind {
		what = fmt.Sprintf("Issuer %s/%s", namespace, ref.Name)
		_, getErr = ri.Namespace(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	} else {
		_, getErr = ri.Get(ctx, ref.Name, metav1.GetOptions{})
	}
	if apierrors.IsNotFound(getErr) {
		return fmt.Errorf("%s: %s: %w (spec pki.rootIssuer names it)", c.Name, what, ErrIssuerNotFound)
	}
	if getErr != nil {
		return fmt.Errorf("%s: read %s: %w", c.Name, what, getErr)
	}
	return nil
}

// Result is what Apply did beyond writing cfg's objects.
type Result struct {
	// RemovedLegacyRoot: an earlier version's root Secret or CA Issuer
	// (the root key in the cluster) was found and deleted.
	RemovedLegacyRoot bool
}

// Apply writes cfg's cert-manager objects to c with server-side apply,
// after checking that c serves cert-manager's CRDs and that a named root
// issuer exists. Without a named root issuer it installs the MeshIssuer
// CRD and the hub signs (pki/issuer): no private key is written. It
// deletes the root Secret and CA Issuer earlier versions wrote.
func Apply(ctx context.Context, c *kube.Cluster, cfg Config) (Result, error) {
	c = c.As(kube.ManagerPKI)
	var res Result
	cfg, err := cfg.withDefaults()
	if err != nil {
		return res, err
	}
	if err := CheckCRDs(ctx, c); err != nil {
		return res, err
	}
	if cfg.RootIssuer != nil {
		if err := CheckIssuer(ctx, c, cfg.Namespace, *cfg.RootIssuer); err != nil {
			return res, err
		}
	}
	if _, err := kube.EnsureNamespace(ctx, c, cfg.Namespace, nil); err != nil {
		return res, err
	}
	served := true
	if cfg.RootIssuer == nil {
		if served, err = InstallIssuerCRD(ctx, c); err != nil {
			return res, err
		}
	}
	objs, err := Objects(cfg)
	if err != nil {
		return res, err
	}
	for _, o := range objs {
		if !served && o.GetKind() == v1alpha1.MeshIssuerKind {
			continue // a dry run before the CRD exists cannot validate it
		}
		if _, err := c.Apply(ctx, o); err != nil {
			return res, err
		}
	}
	if res.RemovedLegacyRoot, err = removeLegacyRoot(ctx, c, cfg.Namespace); err != nil {
		return res, err
	}
	return res, nil
}

// InstallIssuerCRD applies the MeshIssuer CRD and waits until the API
// server serves the kind. A dry run reports whether it is served already.
func InstallIssuerCRD(ctx context.Context, c *kube.Cluster) (served bool, err error) {
	c = c.As(kube.ManagerPKI)
	if _, err := c.Apply(ctx, v1alpha1.CRD()); err != nil {
		return false, err
	}
	if c.DryRun {
		_, _, err := c.Resource(ctx, v1alpha1.MeshIssuerGVK)
		return err == nil, nil
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := c.Dynamic.Resource(crdGVR).Get(ctx, v1alpha1.CRDName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				_, _, err := c.Resource(ctx, v1alpha1.MeshIssuerGVK)
				return err == nil, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return false, fmt.Errorf("%s: CRD %s not established: %w", c.Name, v1alpha1.CRDName, err)
	}
	return true, nil
}

// removeLegacyRoot deletes the root Secret and the CA Issuer on it that
// earlier versions wrote. Only flotilla's own (managed-by label) go.
func removeLegacyRoot(ctx context.Context, c *kube.Cluster, ns string) (bool, error) {
	removed := false
	s, err := c.Kube.CoreV1().Secrets(ns).Get(ctx, RootSecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, fmt.Errorf("%s: read secret %s/%s: %w", c.Name, ns, RootSecretName, err)
	case s.Labels[pki.ManagedByLabel] == pki.ManagedByValue:
		if err := c.Kube.CoreV1().Secrets(ns).Delete(ctx, RootSecretName, c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("%s: delete secret %s/%s: %w", c.Name, ns, RootSecretName, err)
		}
		removed = true
	}
	gvr, _, err := c.Resource(ctx, IssuerGVK)
	if err != nil {
		return removed, err
	}
	iss, err := c.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, RootIssuerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return removed, fmt.Errorf("%s: read Issuer %s/%s: %w", c.Name, ns, RootIssuerName, err)
	case iss.GetLabels()[pki.ManagedByLabel] == pki.ManagedByValue:
		if err := c.Dynamic.Resource(gvr).Namespace(ns).Delete(ctx, RootIssuerName, c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			return removed, fmt.Errorf("%s: delete Issuer %s/%s: %w", c.Name, ns, RootIssuerName, err)
		}
		removed = true
	}
	return removed, nil
}

// Certificate reads the intermediate's Certificate.
func Certificate(ctx context.Context, c *kube.Cluster, namespace string) (*cmapi.Certificate, error) {
	return getCertificate(ctx, c, namespace, IntermediateCertificateName)
}

func getCertificate(ctx context.Context, c *kube.Cluster, namespace, name string) (*cmapi.Certificate, error) {
	gvr, _, err := c.Resource(ctx, CertificateGVK)
	if err != nil {
		return nil, err
	}
	u, err := c.Dynamic.Resource(gvr).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: read Certificate %s/%s: %w", c.Name, namespace, name, err)
	}
	crt := &cmapi.Certificate{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, crt); err != nil {
		return nil, fmt.Errorf("%s: decode Certificate %s/%s: %w", c.Name, namespace, name, err)
	}
	return crt, nil
}

// Ready reports whether crt's Ready condition is True for its current generation.
func Ready(crt *cmapi.Certificate) bool {
	for _, cond := range crt.Status.Conditions {
		if cond.Type == cmapi.CertificateConditionReady {
			return cond.Status == cmmeta.ConditionTrue && cond.ObservedGeneration == crt.Generation
		}
	}
	return false
}

// Issued is the intermediate as cert-manager stored it.
type Issued struct {
	// Cert is the intermediate, Chain what tls.crt holds after it.
	Cert  *x509.Certificate
	Chain []*x509.Certificate
	Key   pki.PrivateKeyPEM
	// CA is ca.crt: what the issuer says its root is. Informational:
	// trust comes from the pinned bundle, never from here.
	CA              []byte
	ResourceVersion string
}

// ReadIssued reads the intermediate's kubernetes.io/tls Secret; a missing
// or incomplete Secret is ErrNotIssued.
func ReadIssued(ctx context.Context, c *kube.Cluster, namespace string) (*Issued, error) {
	s, err := c.Kube.CoreV1().Secrets(namespace).Get(ctx, IntermediateSecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%s: secret %s/%s: %w", c.Name, namespace, IntermediateSecretName, ErrNotIssued)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read secret %s/%s: %w", c.Name, namespace, IntermediateSecretName, err)
	}
	in, err := parseIssued(s.Data)
	if err != nil {
		return nil, fmt.Errorf("%s: secret %s/%s: %w", c.Name, namespace, IntermediateSecretName, err)
	}
	in.ResourceVersion = s.ResourceVersion
	return in, nil
}

func parseIssued(data map[string][]byte) (*Issued, error) {
	if len(data[corev1.TLSCertKey]) == 0 || len(data[corev1.TLSPrivateKeyKey]) == 0 {
		return nil, fmt.Errorf("%w: no %s or %s", ErrNotIssued, corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	}
	certs, err := parseCerts(data[corev1.TLSCertKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", corev1.TLSCertKey, err)
	}
	return &Issued{Cert: certs[0], Chain: certs[1:], Key: pki.NewPrivateKeyPEM(data[corev1.TLSPrivateKeyKey]), CA: data[cmmeta.TLSCAKey]}, nil
}

// CACerts builds istiod's four cacerts keys from what cert-manager issued:
// ca-cert.pem the intermediate, ca-key.pem its key, root-cert.pem the
// pinned trust bundle, cert-chain.pem the intermediate and whatever lies
// between it and the root of trust that it verifies to, then that root.
func (in *Issued) CACerts(trust *pki.Bundle, now time.Time) (pki.CACerts, error) {
	if trust == nil || len(trust.Roots) == 0 {
		return pki.CACerts{}, errors.New("cacerts projection: no pinned trust bundle")
	}
	roots := x509.NewCertPool()
	for _, r := range trust.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range in.Chain {
		inter.AddCert(c)
	}
	chains, err := in.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return pki.CACerts{}, fmt.Errorf("cacerts projection: %w: intermediate %q (issuer %q) against bundle %v: %v", pki.ErrUntrusted, in.Cert.Subject, in.Cert.Issuer, trust.Fingerprints(), err)
	}
	var chain []byte
	for _, c := range chains[0] {
		chain = append(chain, pemCert(c)...)
	}
	cc := pki.CACerts{CACert: pemCert(in.Cert), CAKey: in.Key, RootCert: trust.PEM(), CertChain: chain}
	if err := cc.Validate(now); err != nil {
		return pki.CACerts{}, fmt.Errorf("cacerts projection: %w", err)
	}
	return cc, nil
}

// Project writes the cacerts Secret in namespace from the intermediate's
// current Secret: a no-op when it already matches, an update after
// cert-manager renewed the intermediate.
func Project(ctx context.Context, c *kube.Cluster, namespace string, trust *pki.Bundle, policy pki.ConflictPolicy) (pki.WriteResult, error) {
	return ProjectCRL(ctx, c, namespace, trust, policy, nil)
}

// CRLSource gives the ca-crl.pem that the cacerts of cluster, whose
// intermediate is in, carries (nil: none). The intermediate's key is in
// hand only for the call: a source may sign the intermediate's own CRL
// with it, and must keep no more than that CRL.
type CRLSource func(ctx context.Context, cluster string, in *Issued) ([]byte, error)

// ProjectCRL is Project whose cacerts also carries the CRL that crl gives
// for the intermediate projected (none when crl is nil).
func ProjectCRL(ctx context.Context, c *kube.Cluster, namespace string, trust *pki.Bundle, policy pki.ConflictPolicy, crl CRLSource) (pki.WriteResult, error) {
	in, err := ReadIssued(ctx, c, namespace)
	if err != nil {
		return pki.WriteResult{}, err
	}
	cc, err := in.CACerts(trust, time.Now())
	if err != nil {
		return pki.WriteResult{}, fmt.Errorf("%s: secret %s/%s: %w", c.Name, namespace, IntermediateSecretName, err)
	}
	if crl != nil {
		if cc.CRL, err = crl(ctx, c.Name, in); err != nil {
			return pki.WriteResult{}, fmt.Errorf("%s: %s for secret %s/%s: %w", c.Name, pki.CRLFile, namespace, pki.SecretName, err)
		}
		if err := cc.Validate(time.Now()); err != nil {
			return pki.WriteResult{}, fmt.Errorf("%s: secret %s/%s: %w", c.Name, namespace, pki.SecretName, err)
		}
	}
	return pki.WriteCACerts(ctx, c, namespace, cc, policy)
}

// Follow keeps cacerts in namespace current until ctx ends: it projects
// once, then again whenever the intermediate's Secret or the cacerts
// Secret changes or disappears (both carry flotilla's managed-by label).
// report, when not nil, sees each projection's outcome; ErrNotIssued
// before cert-manager's first issuance is reported and waited out.
func Follow(ctx context.Context, c *kube.Cluster, namespace string, trust *pki.Bundle, policy pki.ConflictPolicy, report func(pki.WriteResult, error)) error {
	return FollowCRL(ctx, c, namespace, trust, policy, nil, report)
}

// FollowCRL is Follow whose every projection carries crl's CRL (ProjectCRL).
func FollowCRL(ctx context.Context, c *kube.Cluster, namespace string, trust *pki.Bundle, policy pki.ConflictPolicy, crl CRLSource, report func(pki.WriteResult, error)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(c.Kube, 10*time.Minute,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = pki.ManagedByLabel + "=" + pki.ManagedByValue
		}))
	inf := factory.Core().V1().Secrets().Informer()
	kick := make(chan struct{}, 1)
	poke := func(obj any) {
		if s, ok := obj.(*corev1.Secret); ok && s.Name != IntermediateSecretName && s.Name != pki.SecretName {
			return
		}
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, o any) { poke(o) },
		DeleteFunc: poke,
	}); err != nil {
		return fmt.Errorf("%s: watch secrets in %s: %w", c.Name, namespace, err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	poke(nil)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		res, err := ProjectCRL(ctx, c, namespace, trust, policy, crl)
		if report != nil && ctx.Err() == nil {
			report(res, err)
		}
	}
}

// WaitReady waits until the intermediate's Certificate is Ready and its
// Secret holds a certificate other than previous (nil: any), and returns it.
func WaitReady(ctx context.Context, c *kube.Cluster, namespace string, previous *x509.Certificate) (*Issued, error) {
	var got *Issued
	var last, denial error
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		crt, err := Certificate(ctx, c, namespace)
		if err != nil {
			last = err
			return false, nil
		}
		if !Ready(crt) {
			// A denial is a decision: waiting for cert-manager's retry
			// (after its backoff, an hour by default) would only time out.
			if denial = deniedRequest(ctx, c, crt); denial != nil {
				return true, nil
			}
			last = fmt.Errorf("%s: Certificate %s/%s not Ready: %s", c.Name, namespace, IntermediateCertificateName, conditionSummary(crt))
			return false, nil
		}
		in, err := ReadIssued(ctx, c, namespace)
		if err != nil {
			last = err
			return false, nil
		}
		if previous != nil && in.Cert.Equal(previous) {
			last = fmt.Errorf("%s: secret %s/%s still holds the previous certificate (serial %s)", c.Name, namespace, IntermediateSecretName, previous.SerialNumber)
			return false, nil
		}
		got = in
		return true, nil
	})
	switch {
	case denial != nil:
		return nil, denial
	case err != nil:
		return nil, fmt.Errorf("waiting for cert-manager to issue the intermediate: %w (last: %v)", err, last)
	}
	return got, nil
}

// deniedRequest is an error naming the request and the approver's reason
// when crt's issuance failed because an approver denied its current
// CertificateRequest; nil otherwise (not failed, or for another reason).
func deniedRequest(ctx context.Context, c *kube.Cluster, crt *cmapi.Certificate) error {
	issuing := slices.IndexFunc(crt.Status.Conditions, func(cond cmapi.CertificateCondition) bool {
		return cond.Type == cmapi.CertificateConditionIssuing && cond.Status == cmmeta.ConditionFalse
	})
	if issuing < 0 {
		return nil
	}
	gvr, _, err := c.Resource(ctx, CertificateRequestGVK)
	if err != nil {
		return nil
	}
	list, err := c.Dynamic.Resource(gvr).Namespace(crt.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil // the wait goes on; its timeout says what it last saw
	}
	revision := "1"
	if crt.Status.Revision != nil {
		revision = strconv.Itoa(*crt.Status.Revision + 1)
	}
	for i := range list.Items {
		a := list.Items[i].GetAnnotations()
		if a[cmapi.CertificateNameKey] != crt.Name || a[cmapi.CertificateRequestRevisionAnnotationKey] != revision {
			continue
		}
		cr := &cmapi.CertificateRequest{}
		if runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, cr) != nil {
			continue
		}
		for _, cond := range cr.Status.Conditions {
			if cond.Type == cmapi.CertificateRequestConditionDenied && cond.Status == cmmeta.ConditionTrue {
				return fmt.Errorf("%s: Certificate %s/%s: CertificateRequest %s/%s was denied by an approver (reason %s): %s; cert-manager tries again after its backoff",
					c.Name, crt.Namespace, crt.Name, cr.Namespace, cr.Name, cond.Reason, cond.Message)
			}
		}
	}
	return nil
}

func conditionSummary(crt *cmapi.Certificate) string {
	if len(crt.Status.Conditions) == 0 {
		return "no conditions yet"
	}
	var s string
	for _, c := range crt.Status.Conditions {
		s += fmt.Sprintf("%s=%s (%s: %s) ", c.Type, c.Status, c.Reason, c.Message)
	}
	return s
}

// Renew asks cert-manager to re-issue the intermediate now, as `cmctl
// renew` does: it sets the Certificate's Issuing condition to True with
// reason ManuallyTriggered; cert-manager's trigger and issuing controllers
// take it from there, and the condition goes away once issued.
func Renew(ctx context.Context, c *kube.Cluster, namespace string) error {
	crt, err := Certificate(ctx, c, namespace)
	if err != nil {
		return err
	}
	gvr, _, err := c.Resource(ctx, CertificateGVK)
	if err != nil {
		return err
	}
	status := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateKind,
		"metadata":   map[string]any{"name": IntermediateCertificateName, "namespace": namespace},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type":               string(cmapi.CertificateConditionIssuing),
			"status":             string(cmmeta.ConditionTrue),
			"reason":             "ManuallyTriggered",
			"message":            "Certificate re-issuance manually triggered by flotilla",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
			"observedGeneration": crt.Generation,
		}}},
	}}
	opts := c.As(kube.ManagerPKI).ApplyOptions()
	if _, err := c.Dynamic.Resource(gvr).Namespace(namespace).ApplyStatus(ctx, IntermediateCertificateName, status, opts); err != nil {
		return fmt.Errorf("%s: renew Certificate %s/%s: %w", c.Name, namespace, IntermediateCertificateName, err)
	}
	return nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", pki.ErrInvalidPEM, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no PEM certificate", pki.ErrInvalidPEM)
	}
	return out, nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
