package csragent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/csrpolicy"
)

// Server implements IstioCertificateService. Create it with New, start its
// watch with Start, and register it on a grpc.Server (Run does all of it).
type Server struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer

	opts    Options
	gvr     schema.GroupVersionResource
	metrics *metrics

	reviews, requests *limiter

	mu      sync.Mutex
	waiters map[string]chan *cmapi.CertificateRequest
	synced  cache.InformerSynced
}

// New checks opts and prepares a Server; it does no I/O.
func New(opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	// The agent's writes (root-cert ConfigMaps, istiod's Certificate,
	// CertificateRequests) are the PKI's.
	opts.Cluster = opts.Cluster.As(kube.ManagerPKI)
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("%s: csr-agent metrics: %w", opts.Cluster.Name, err)
	}
	l := opts.Limits
	return &Server{
		opts: opts, metrics: m, waiters: map[string]chan *cmapi.CertificateRequest{},
		reviews:  newLimiter("token reviews", l.TokenReviewsPerToken, l.TokenReviews, l.Unlimited),
		requests: newLimiter("certificate requests", l.RequestsPerIdentity, l.Requests, l.Unlimited),
	}, nil
}

// Start watches the agent's CertificateRequests until ctx ends, and waits
// for the watch's first list. CreateCertificate needs it.
func (s *Server) Start(ctx context.Context) error {
	c := s.opts.Cluster
	gvr, _, err := c.Resource(ctx, cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateRequestKind))
	if err != nil {
		return err
	}
	s.gvr = gvr
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(c.Dynamic, 10*time.Minute, s.opts.Namespace, func(o *metav1.ListOptions) {
		o.LabelSelector = requestLabel + "=true"
	})
	inf := f.ForResource(gvr).Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.observe,
		UpdateFunc: func(_, o any) { s.observe(o) },
	}); err != nil {
		return fmt.Errorf("%s: watch CertificateRequests in %s: %w", c.Name, s.opts.Namespace, err)
	}
	f.Start(ctx.Done())
	s.synced = inf.HasSynced
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("%s: watch CertificateRequests in %s: not synced: %w", c.Name, s.opts.Namespace, ctx.Err())
	}
	return nil
}

// observe hands a finished CertificateRequest to whoever waits for it.
func (s *Server) observe(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	cr := &cmapi.CertificateRequest{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cr); err != nil {
		return
	}
	if !finished(cr) {
		return
	}
	s.mu.Lock()
	ch := s.waiters[cr.Name]
	delete(s.waiters, cr.Name)
	s.mu.Unlock()
	if ch != nil {
		ch <- cr
	}
}

func finished(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		switch {
		case c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
			return true
		case c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionFalse &&
			(c.Reason == cmapi.CertificateRequestReasonFailed || c.Reason == cmapi.CertificateRequestReasonDenied):
			return true
		case c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue:
			return true
		case c.Type == cmapi.CertificateRequestConditionInvalidRequest && c.Status == cmmeta.ConditionTrue:
			return true
		}
	}
	return false
}

// CreateCertificate signs a workload CSR for the caller's own identity.
func (s *Server) CreateCertificate(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (resp *securityv1alpha1.IstioCertificateResponse, err error) {
	start := time.Now()
	s.metrics.inflight.Inc()
	defer func() {
		s.metrics.inflight.Dec()
		code := status.Code(err).String()
		s.metrics.requests.WithLabelValues(code).Inc()
		s.metrics.duration.WithLabelValues(code).Observe(time.Since(start).Seconds())
	}()

	token, err := bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.GetCsr()) > s.opts.MaxCSRBytes {
		return nil, status.Errorf(codes.InvalidArgument, "CSR of %d bytes exceeds the limit of %d", len(req.GetCsr()), s.opts.MaxCSRBytes)
	}
	ttl, err := s.lifetime(req.GetValidityDuration())
	if err != nil {
		return nil, err
	}
	if err := s.reviews.allow(tokenKey(token), time.Now()); err != nil {
		return nil, err
	}
	id, err := s.authenticate(ctx, token)
	if err != nil {
		return nil, err
	}
	csrPEM, err := checkCSR(req.GetCsr(), id)
	if err != nil {
		return nil, err
	}
	if err := s.requests.allow(id.String(), time.Now()); err != nil {
		return nil, err
	}
	chain, err := s.sign(ctx, id, csrPEM, ttl)
	if err != nil {
		return nil, err
	}
	return &securityv1alpha1.IstioCertificateResponse{CertChain: chain}, nil
}

func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", status.Error(codes.Unauthenticated, "no authorization metadata: send a service-account token as 'authorization: Bearer <token>'")
	}
	if len(vals) > 1 {
		return "", status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", status.Error(codes.Unauthenticated, "authorization is not 'Bearer <token>'")
	}
	if len(tok) > 16<<10 {
		return "", status.Error(codes.Unauthenticated, "bearer token too large")
	}
	return tok, nil
}

func (s *Server) lifetime(seconds int64) (time.Duration, error) {
	switch {
	case seconds < 0:
		return 0, status.Errorf(codes.InvalidArgument, "validity_duration %d is negative", seconds)
	case seconds == 0:
		return s.opts.MaxLifetime, nil
	case seconds > int64(s.opts.MaxLifetime/time.Second):
		return 0, status.Errorf(codes.InvalidArgument, "validity_duration %ds exceeds the maximum of %s", seconds, s.opts.MaxLifetime)
	case seconds < 600:
		// cert-manager refuses durations under 10 minutes (its
		// minimum), so the request would only fail later.
		return 0, status.Errorf(codes.InvalidArgument, "validity_duration %ds is below cert-manager's minimum of 10m", seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

// authenticate reviews the token and returns the identity it may ask for.
func (s *Server) authenticate(ctx context.Context, token string) (pki.SPIFFEID, error) {
	c := s.opts.Cluster
	tr, err := c.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: s.opts.Audiences},
	}, metav1.CreateOptions{FieldManager: "flotilla-csr-agent"})
	if err != nil {
		s.opts.Log.Error("token review failed", "cluster", c.Name, "err", err)
		return pki.SPIFFEID{}, status.Errorf(codes.Unavailable, "token review: %v", err)
	}
	if !tr.Status.Authenticated {
		return pki.SPIFFEID{}, status.Errorf(codes.Unauthenticated, "token rejected: %s", tr.Status.Error)
	}
	if !anyIn(tr.Status.Audiences, s.opts.Audiences) {
		return pki.SPIFFEID{}, status.Errorf(codes.Unauthenticated, "token audiences %v do not include %v", tr.Status.Audiences, s.opts.Audiences)
	}
	ns, sa, ok := serviceAccount(tr.Status.User.Username)
	if !ok {
		return pki.SPIFFEID{}, status.Errorf(codes.PermissionDenied, "%q is not a service account", tr.Status.User.Username)
	}
	id := pki.SPIFFEID{TrustDomain: s.opts.TrustDomain, Namespace: ns, ServiceAccount: sa}
	if err := id.Validate(); err != nil {
		return pki.SPIFFEID{}, status.Errorf(codes.PermissionDenied, "%v", err)
	}
	return id, nil
}

func anyIn(have, want []string) bool {
	for _, h := range have {
		for _, w := range want {
			if h == w {
				return true
			}
		}
	}
	return false
}

// serviceAccount splits system:serviceaccount:<ns>:<name>.
func serviceAccount(user string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != "" && !strings.Contains(name, ":")
}

// checkCSR accepts a signed PKCS#10 request whose only SAN is id's URI
// (read from the raw extension: no otherName or directoryName slips by),
// with an allowed key, istio-agent's subject and no CA request, and
// returns it re-encoded (nothing after the PEM block travels on).
func checkCSR(in string, id pki.SPIFFEID) ([]byte, error) {
	b, _ := pem.Decode([]byte(in))
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
		return nil, status.Error(codes.InvalidArgument, "csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := (csrpolicy.Signature{}).Valid(csr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr signature: %v", err)
	}
	if len(csr.URIs) != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "csr has %d URI SANs, want exactly %s", len(csr.URIs), id)
	}
	if got := csr.URIs[0].String(); got != id.String() {
		return nil, status.Errorf(codes.PermissionDenied, "csr asks for %s, the token is for %s", got, id)
	}
	if err := workloadPolicy(id).Valid(csr); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}), nil
}

// sign creates a CertificateRequest, waits for cert-manager, deletes it,
// and returns the chain leaf first, root last.
func (s *Server) sign(ctx context.Context, id pki.SPIFFEID, csrPEM []byte, ttl time.Duration) ([]string, error) {
	c := s.opts.Cluster
	if s.synced == nil || !s.synced() {
		return nil, status.Error(codes.Unavailable, "csr-agent is starting")
	}
	name := "csr-agent-" + randomHex(8)
	ch := make(chan *cmapi.CertificateRequest, 1)
	s.mu.Lock()
	s.waiters[name] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiters, name)
		s.mu.Unlock()
		// Finished or abandoned, the request goes: it holds nothing
		// secret but would pile up at one per workload per day.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := c.Dynamic.Resource(s.gvr).Namespace(s.opts.Namespace).Delete(dctx, name, c.DeleteOptions()); err != nil && !apierrors.IsNotFound(err) {
			s.opts.Log.Warn("delete CertificateRequest", "cluster", c.Name, "name", name, "err", err)
		}
	}()

	cr := map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateRequestKind,
		"metadata": map[string]any{
			"name": name, "namespace": s.opts.Namespace,
			"labels":      map[string]any{requestLabel: "true"},
			"annotations": map[string]any{identityAnnotation: id.String()},
		},
		"spec": map[string]any{
			"request":   base64.StdEncoding.EncodeToString(csrPEM),
			"duration":  ttl.String(),
			"isCA":      false,
			"usages":    []any{string(cmapi.UsageDigitalSignature), string(cmapi.UsageKeyEncipherment), string(cmapi.UsageServerAuth), string(cmapi.UsageClientAuth)},
			"issuerRef": map[string]any{"name": s.opts.Issuer.Name, "kind": issuerKind(s.opts.Issuer.Kind), "group": "cert-manager.io"},
		},
	}
	wctx, cancel := context.WithTimeout(ctx, s.opts.SignTimeout)
	defer cancel()
	if _, err := c.Apply(wctx, &unstructured.Unstructured{Object: cr}); err != nil {
		s.opts.Log.Error("create CertificateRequest", "cluster", c.Name, "err", err)
		return nil, status.Errorf(codes.Unavailable, "create CertificateRequest: %v", err)
	}
	if err := s.approve(wctx, name); err != nil {
		s.opts.Log.Error("approve CertificateRequest", "cluster", c.Name, "name", name, "err", err)
		return nil, status.Errorf(codes.Unavailable, "approve CertificateRequest %s/%s: %v", s.opts.Namespace, name, err)
	}
	var done *cmapi.CertificateRequest
	select {
	case done = <-ch:
	case <-wctx.Done():
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.DeadlineExceeded, "cert-manager did not sign CertificateRequest %s/%s within %s (issuer %s)", s.opts.Namespace, name, s.opts.SignTimeout, s.opts.Issuer)
	}
	if len(done.Status.Certificate) == 0 {
		return nil, status.Errorf(codes.Internal, "cert-manager refused CertificateRequest %s/%s: %s", s.opts.Namespace, name, reason(done))
	}
	return s.chain(done.Status.Certificate, id)
}

// ApprovedReason is the reason of the agent's Approved condition, named
// after the approver as cert-manager's own ("cert-manager.io") is.
const ApprovedReason = "csr-agent.flotilla.dev"

// approverFieldManager owns the agent's Approved condition.
const approverFieldManager = "flotilla-csr-agent-approver"

// approve approves the request the agent just made: its policy has passed
// (the token's identity, the CSR's one SPIFFE SAN, key and subject, the
// rate), and the request names the agent's own issuer, the one signer its
// Role lets it approve for (SignerName). Approval is explicit so that a
// cert-manager without its default approver signs the agent's requests
// and nothing else unapproved. A decision another approver wrote first
// stands (the apply is not forced; its conflict is no error).
func (s *Server) approve(ctx context.Context, name string) error {
	c := s.opts.Cluster
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateRequestKind,
		"metadata":   map[string]any{"name": name, "namespace": s.opts.Namespace},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": string(cmapi.CertificateRequestConditionApproved), "status": string(cmmeta.ConditionTrue),
			"reason": ApprovedReason, "message": "Approved by the flotilla csr-agent: the caller's own workload identity, as its policy admits",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}},
	}}
	_, err := c.Dynamic.Resource(s.gvr).Namespace(s.opts.Namespace).ApplyStatus(ctx, name, obj, metav1.ApplyOptions{FieldManager: approverFieldManager})
	switch {
	case apierrors.IsConflict(err):
		return nil
	case apierrors.IsForbidden(err):
		// An issuer other than the one its Role names (cert-manager's
		// webhook checks `approve` on the signer): approval is the
		// cluster's approver's, and the request waits for it.
		s.opts.Log.Warn("csr-agent may not approve for its issuer; waiting for the cluster's approver", "cluster", c.Name, "issuer", s.opts.Issuer.String(), "name", name,
			"needs", "verb approve on signers.cert-manager.io "+SignerName(s.opts.Namespace, s.opts.Issuer), "err", err)
		return nil
	}
	return err
}

// SignerName is cert-manager's name of the signer behind issuer, the
// resource name of the `approve` verb on `signers` that its approval
// checks: issuers.cert-manager.io/<namespace>.<name> for an Issuer,
// clusterissuers.cert-manager.io/<name> for a ClusterIssuer.
func SignerName(namespace string, issuer certmanager.IssuerRef) string {
	if issuerKind(issuer.Kind) == "ClusterIssuer" {
		return "clusterissuers.cert-manager.io/" + issuer.Name
	}
	return "issuers.cert-manager.io/" + namespace + "." + issuer.Name
}

// chain verifies what cert-manager returned against the pinned bundle and
// returns leaf, intermediates, root: the root is the bundle's.
func (s *Server) chain(certPEM []byte, id pki.SPIFFEID) ([]string, error) {
	var certs []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "cert-manager returned an unparsable certificate: %v", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, status.Error(codes.Internal, "cert-manager returned no certificate")
	}
	roots := x509.NewCertPool()
	for _, r := range s.opts.TrustBundle.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "issued certificate does not chain to the pinned trust bundle %v: %v", s.opts.TrustBundle.Fingerprints(), err)
	}
	if _, err := pki.NewBundle(chains[0][len(chains[0])-1]).Verify(chains[0], time.Now(), id.String()); err != nil {
		return nil, status.Errorf(codes.Internal, "issued certificate: %v", err)
	}
	out := make([]string, 0, len(chains[0]))
	for _, c := range chains[0] {
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return out, nil
}

func reason(cr *cmapi.CertificateRequest) string {
	var parts []string
	for _, c := range cr.Status.Conditions {
		parts = append(parts, fmt.Sprintf("%s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message))
	}
	if cr.Status.FailureTime != nil {
		parts = append(parts, "failed at "+cr.Status.FailureTime.UTC().Format(time.RFC3339))
	}
	return strings.Join(parts, "; ")
}

func issuerKind(k string) string {
	if k == "" {
		return "Issuer"
	}
	return k
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
