package csragent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Run serves the agent until ctx ends: the gRPC service on opts.Listen,
// metrics on opts.MetricsListen, the istio-ca-root-cert ConfigMaps, and
// istiod's Certificate when opts.Istiod. It is what `flotilla csr-agent`
// calls.
func Run(ctx context.Context, opts Options) error {
	s, err := New(opts)
	if err != nil {
		return err
	}
	o := s.opts
	if o.Listen == "" {
		o.Listen = fmt.Sprintf(":%d", DefaultPort)
	}
	tlsCfg, err := servingTLS(o)
	if err != nil {
		return fmt.Errorf("%s: csr-agent: %w", o.Cluster.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		return err
	}
	if o.Istiod {
		if err := EnsureIstiodCertificate(ctx, s.opts); err != nil {
			return err
		}
	}
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("%s: csr-agent: listen %s: %w", o.Cluster.Name, o.Listen, err)
	}
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() { errs <- s.KeepRootCerts(ctx) })
	if o.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.gatherer, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
		hs := &http.Server{Addr: o.MetricsListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("metrics: %w", err)
			}
		})
		context.AfterFunc(ctx, func() { hs.Close() })
	}
	o.Log.Info("csr-agent serving", "cluster", o.Cluster.Name, "listen", lis.Addr().String(), "issuer", o.Issuer.String(), "trustDomain", o.TrustDomain)
	wg.Go(func() { errs <- s.Serve(ctx, lis, tlsCfg) })
	var first error
	select {
	case first = <-errs:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	return first
}

// Serve serves CreateCertificate over TLS on lis until ctx ends. Start
// must have been called.
func (s *Server) Serve(ctx context.Context, lis net.Listener, tlsCfg *tls.Config) error {
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxConcurrentStreams(256),
		grpc.ConnectionTimeout(10*time.Second),
	)
	securityv1alpha1.RegisterIstioCertificateServiceServer(gs, s)
	stop := context.AfterFunc(ctx, gs.GracefulStop)
	defer stop()
	if err := gs.Serve(lis); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%s: csr-agent: serve: %w", s.opts.Cluster.Name, err)
	}
	return nil
}

// servingTLS is opts.TLS, or a config that reads the certificate files and
// reads them again when they change on disk.
func servingTLS(o Options) (*tls.Config, error) {
	if o.TLS != nil {
		return o.TLS, nil
	}
	if o.TLSCertFile == "" || o.TLSKeyFile == "" {
		return nil, errors.New("no serving certificate: give --tls-cert-file and --tls-key-file")
	}
	r := &certReloader{certFile: o.TLSCertFile, keyFile: o.TLSKeyFile}
	if _, err := r.get(nil); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.get, NextProtos: []string{"h2"}}, nil
}

type certReloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	modTime           time.Time
	cert              *tls.Certificate
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	st, err := os.Stat(r.certFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && st.ModTime().Equal(r.modTime) {
		return r.cert, nil
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert != nil {
			// Mid-rotation (a kubelet swaps both files): keep serving the last good pair.
			return r.cert, nil
		}
		return nil, fmt.Errorf("serving certificate %s: %w", r.certFile, err)
	}
	r.cert, r.modTime = &c, st.ModTime()
	return r.cert, nil
}

// KeepRootCerts writes the istio-ca-root-cert ConfigMap (root-cert.pem:
// the pinned bundle) in each of opts.RootCertNamespaces, or in every
// namespace, and rewrites it whenever it is changed or deleted, until ctx
// ends. Namespaces and ConfigMaps are read from informer caches: an event
// costs no list or get on the API server, only the writes it needs.
func (s *Server) KeepRootCerts(ctx context.Context) error {
	c := s.opts.Cluster
	f := informers.NewSharedInformerFactoryWithOptions(c.Kube, defaultRootCertSync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			if o.FieldSelector == "" {
				o.FieldSelector = "metadata.name=" + RootCertConfigMap
			}
		}))
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke}
	cms := f.Core().V1().ConfigMaps()
	if _, err := cms.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	synced := []cache.InformerSynced{cms.Informer().HasSynced}
	var nsLister corelisters.NamespaceLister
	if len(s.opts.RootCertNamespaces) == 0 {
		nsf := informers.NewSharedInformerFactory(c.Kube, defaultRootCertSync)
		nss := nsf.Core().V1().Namespaces()
		if _, err := nss.Informer().AddEventHandler(handler); err != nil {
			return err
		}
		nsLister = nss.Lister()
		synced = append(synced, nss.Informer().HasSynced)
		nsf.Start(ctx.Done())
		defer nsf.Shutdown()
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	src := cachedRootCerts{ns: nsLister, cm: cms.Lister()}
	poke(nil)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		if err := s.writeRootCerts(ctx, src); err != nil && ctx.Err() == nil {
			s.opts.Log.Error("istio-ca-root-cert", "cluster", c.Name, "err", err)
		}
	}
}

// rootCertSource reads what writeRootCerts compares against.
type rootCertSource interface {
	namespaces(ctx context.Context) ([]*corev1.Namespace, error)
	configMap(ctx context.Context, ns string) (*corev1.ConfigMap, error)
}

// liveRootCerts reads from the API server (one-shot writes).
type liveRootCerts struct{ c *kube.Cluster }

func (l liveRootCerts) namespaces(ctx context.Context) ([]*corev1.Namespace, error) {
	list, err := l.c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Namespace, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

func (l liveRootCerts) configMap(ctx context.Context, ns string) (*corev1.ConfigMap, error) {
	return l.c.Kube.CoreV1().ConfigMaps(ns).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
}

// cachedRootCerts reads from KeepRootCerts' informers.
type cachedRootCerts struct {
	ns corelisters.NamespaceLister
	cm corelisters.ConfigMapLister
}

func (c cachedRootCerts) namespaces(context.Context) ([]*corev1.Namespace, error) {
	return c.ns.List(labels.Everything())
}

func (c cachedRootCerts) configMap(_ context.Context, ns string) (*corev1.ConfigMap, error) {
	return c.cm.ConfigMaps(ns).Get(RootCertConfigMap)
}

// WriteRootCerts writes istio-ca-root-cert where it is missing or stale,
// reading the cluster directly.
func (s *Server) WriteRootCerts(ctx context.Context) error {
	return s.writeRootCerts(ctx, liveRootCerts{s.opts.Cluster})
}

func (s *Server) writeRootCerts(ctx context.Context, src rootCertSource) error {
	c := s.opts.Cluster
	nss := s.opts.RootCertNamespaces
	if len(nss) == 0 {
		list, err := src.namespaces(ctx)
		if err != nil {
			return fmt.Errorf("%s: list namespaces: %w", c.Name, err)
		}
		for _, n := range list {
			if n.Status.Phase != corev1.NamespaceTerminating {
				nss = append(nss, n.Name)
			}
		}
	}
	want := s.opts.TrustBundle.PEM()
	var errs []error
	for _, ns := range nss {
		cur, err := src.configMap(ctx, ns)
		if err == nil && cur.Data[RootCertKey] == string(want) && c.Owns(cur) {
			continue
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("%s: read configmap %s/%s: %w", c.Name, ns, RootCertConfigMap, err))
			continue
		}
		ac := corev1ac.ConfigMap(RootCertConfigMap, ns).
			WithLabels(map[string]string{"istio.io/config": "true", kube.ManagedByLabel: kube.ManagedBy}).
			WithData(map[string]string{RootCertKey: string(want)})
		got, err := c.Kube.CoreV1().ConfigMaps(ns).Apply(ctx, ac, c.ApplyOptions())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: write configmap %s/%s: %w", c.Name, ns, RootCertConfigMap, err))
			continue
		}
		if err := c.TakeOver(ctx, corev1.SchemeGroupVersion.WithResource("configmaps"), got); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IstiodCertificateObject is the Certificate for istiod's serving
// certificate (Secret istiod-tls), as istio-csr keeps it: istiod's service
// names and its SPIFFE ID, signed by the workload issuer.
func IstiodCertificateObject(namespace, trustDomain string, issuer string) *unstructured.Unstructured {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cmapi.SchemeGroupVersion.String(),
		"kind":       cmapi.CertificateKind,
		"metadata": map[string]any{
			"name": IstiodCertificate, "namespace": namespace,
			"labels": map[string]any{kube.ManagedByLabel: kube.ManagedBy},
		},
		"spec": map[string]any{
			"secretName":  IstiodSecret,
			"duration":    defaultIstiodTTL.String(),
			"renewBefore": (defaultIstiodTTL / 3).String(),
			"dnsNames": []any{
				"istiod." + namespace + ".svc",
				"istiod." + namespace + ".svc.cluster.local",
				"istiod-remote." + namespace + ".svc",
			},
			"uris":       []any{"spiffe://" + trustDomain + "/ns/" + namespace + "/sa/istiod"},
			"usages":     []any{"digital signature", "key encipherment", "server auth", "client auth"},
			"privateKey": map[string]any{"algorithm": "ECDSA", "size": int64(256), "rotationPolicy": "Always", "encoding": "PKCS8"},
			"issuerRef":  map[string]any{"name": issuer, "kind": "Issuer", "group": "cert-manager.io"},
		},
	}}
}

// EnsureIstiodCertificate applies istiod's Certificate.
func EnsureIstiodCertificate(ctx context.Context, o Options) error {
	if o.Issuer.Kind != "" && o.Issuer.Kind != "Issuer" {
		return fmt.Errorf("%s: istiod certificate: only a namespaced Issuer is supported, not %s", o.Cluster.Name, o.Issuer)
	}
	_, err := o.Cluster.As(kube.ManagerPKI).Apply(ctx, IstiodCertificateObject(o.Namespace, o.TrustDomain, o.Issuer.Name))
	return err
}
