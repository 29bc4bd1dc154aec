// Package lab runs isolated Kubernetes clusters on loopback for tests, the
// demo and flotilla-lab: per cluster a real etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler built from the upstream Go
// modules, kwok for a fake node and pod lifecycle, a LoadBalancer address
// allocator, and the Istio, Sail Operator and cert-manager CRDs; without
// RealIstio, a stand-in for Istio's injection of gateway pods
// (injection.go).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Options configure a lab.
type Options struct {
	// Clusters are the names of the clusters to start (DNS-1123 labels).
	Clusters []string
	// Dir holds data, logs and the kubeconfig; "" makes a temporary one.
	// It must not be in use by another running lab.
	Dir string
	// CRDDir holds the CRDs to install; "" is FindCRDDir.
	CRDDir string
	// BinDir holds the lab binaries; "" builds or reuses the cache (Build).
	BinDir string
	// Build says where binaries are cached and built from.
	Build BuildOptions
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// CertManager runs cert-manager's own controllers (issuers, certificate
	// requests with the approver, certificates) against each cluster.
	CertManager bool
	// CertManagerWithoutApprover runs cert-manager without its default
	// approver (upstream's --controllers=*,-certificaterequests-approver),
	// as a cluster whose requests are approved by policy: a request stays
	// unapproved until something approves it.
	CertManagerWithoutApprover bool
	// CertManagerWebhook runs cert-manager's admission webhook too,
	// registered with the API server as cert-manager's chart registers it:
	// requests record their requester, objects are validated, and setting
	// Approved or Denied on a CertificateRequest needs `approve` on its
	// signer (RBAC verb approve, resource signers, group cert-manager.io).
	CertManagerWebhook bool
	// RealIstio runs Istio itself in each cluster: the lab's Sail Operator
	// installs Istio's own charts for Sail Istio, IstioCNI and ZTunnel
	// resources (their DaemonSets' pods run under kwok: their data path is
	// the emulator's), and a real istiod runs for every istiod pod they
	// make. Its binaries are built on first use (EnsureIstioBinaries).
	RealIstio bool
	// PrivateAPIServers (with RealIstio) runs each cluster's istiods in a
	// network namespace of the cluster's own, from which no other
	// cluster's API server is reachable, only load-balancer addresses
	// (east-west gateways) and its own API server (privatenet.go).
	PrivateAPIServers bool
	// LabLoadBalancers gives load-balancer addresses 10.L.(100+i).n, with
	// loopback stand-ins, instead of 127.L.i.n: Istio's remote profile
	// (primary-remote, external control plane) puts the primary's gateway
	// address in an EndpointSlice, where the API server refuses loopback.
	// The host never sends to them, so the hub and tests cannot dial a
	// gateway there (an API server read through its gateway): an istiod
	// can, from a private network (PrivateAPIServers), which stands them in.
	LabLoadBalancers bool
}

// Lab is a set of running clusters.
type Lab struct {
	// Dir holds the clusters' data and logs.
	Dir string
	// Kubeconfig is a kubeconfig with one context per cluster, named after it.
	Kubeconfig string
	// BinDir holds the binaries the lab runs (kubectl among them).
	BinDir string
	// IstioDir holds Istio's parts (RealIstio): pilot-discovery, sail-lab, charts/.
	IstioDir string

	clusters []*Cluster
	net      *netLock
	dirLock  *os.File
	tempDir  bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	log      io.Writer
	stopOnce sync.Once
}

// Cluster is one running lab cluster.
type Cluster struct {
	Name string
	// Index is the cluster's 1-based position in the lab; addresses derive from it.
	Index int
	// Server is the API server URL (https on loopback).
	Server string
	// CAData is the PEM CA bundle the API server's certificate chains to.
	CAData []byte
	// Token is the admin bearer token (system:masters).
	Token string
	// Kubeconfig is the lab kubeconfig; its context for this cluster is Name.
	Kubeconfig string
	// PodCIDR, NodeIP and LoadBalancerCIDR are this cluster's addresses.
	PodCIDR, NodeIP, LoadBalancerCIDR string
	// KwokAddress is where this cluster's kwok serves exec, logs and port-forward.
	KwokAddress string

	dir         string
	octet       int
	procs       []*process
	certManager bool
	noApprover  bool
	cmWebhook   bool
	realIstio   bool
	private     bool // Options.PrivateAPIServers
	istiods     *istiodKubelet
	net         *clusterNet
}

// Bin returns the path of a lab binary, e.g. Bin("kubectl").
func (l *Lab) Bin(name string) string { return filepath.Join(l.BinDir, name) }

// Clusters returns the clusters in start order.
func (l *Lab) Clusters() []*Cluster { return append([]*Cluster(nil), l.clusters...) }

// Cluster returns the named cluster, or nil.
func (l *Lab) Cluster(name string) *Cluster {
	for _, c := range l.clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// RESTConfig is an admin config for the cluster.
func (c *Cluster) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            c.Server,
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData},
		QPS:             100,
		Burst:           200,
	}
}

// Client is an admin clientset for the cluster.
func (c *Cluster) Client() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(c.RESTConfig())
}

// Connect returns flotilla's connection to the cluster, named after it.
func (c *Cluster) Connect() (*kube.Cluster, error) { return kube.Connect(c.Name, c.RESTConfig()) }

// ValidateNames checks cluster names the way Start does.
func ValidateNames(names []string) error {
	if len(names) == 0 {
		return errors.New("no cluster names given")
	}
	seen := map[string]bool{}
	for _, n := range names {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			return fmt.Errorf("cluster name %q is not a DNS-1123 label: %s", n, strings.Join(errs, "; "))
		}
		if seen[n] {
			return fmt.Errorf("cluster name %q given twice", n)
		}
		seen[n] = true
	}
	if len(names) > 200 {
		return fmt.Errorf("%d clusters: the lab's address plan holds at most 200", len(names))
	}
	return nil
}

// Start starts the clusters and returns when all are ready: API server
// answering, CRDs established, fake node Ready, controllers running. On
// failure nothing is left running.
func Start(ctx context.Context, o Options) (l *Lab, err error) {
	if err := ValidateNames(o.Clusters); err != nil {
		return nil, err
	}
	if len(o.Clusters) > maxClusters {
		return nil, fmt.Errorf("lab options: %d clusters, at most %d fit the address plan", len(o.Clusters), maxClusters)
	}
	if (o.CertManagerWithoutApprover || o.CertManagerWebhook) && !o.CertManager {
		return nil, errors.New("lab options: CertManagerWithoutApprover and CertManagerWebhook need CertManager")
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	l = &Lab{log: logw}
	defer func() {
		if err != nil {
			l.Stop()
			l = nil
		}
	}()
	if o.Dir == "" {
		if o.Dir, err = os.MkdirTemp("", "flotilla-lab-"); err != nil {
			return l, err
		}
		l.tempDir = true
	}
	if err := l.lockDir(o.Dir); err != nil {
		return l, err
	}
	l.Dir = o.Dir
	l.Kubeconfig = filepath.Join(o.Dir, "kubeconfig")

	crdDir := o.CRDDir
	if crdDir == "" {
		if crdDir, err = FindCRDDir(); err != nil {
			return l, err
		}
	}
	crds, err := loadCRDs(crdDir)
	if err != nil {
		return l, err
	}
	gwDir, err := gatewayAPICRDDir(ctx)
	if err != nil {
		return l, err
	}
	gwCRDs, err := loadCRDs(gwDir)
	if err != nil {
		return l, err
	}
	crds = append(crds, gwCRDs...)
	if o.BinDir == "" {
		if o.Build.Log == nil {
			o.Build.Log = logw
		}
		if o.BinDir, err = EnsureBinaries(ctx, o.Build); err != nil {
			return l, err
		}
	} else if !complete(o.BinDir) {
		return l, fmt.Errorf("lab binaries missing in %s", o.BinDir)
	}
	l.BinDir = o.BinDir
	if o.RealIstio {
		b := o.Build
		if b.Log == nil {
			b.Log = logw
		}
		if l.IstioDir, err = EnsureIstioBinaries(ctx, b); err != nil {
			return l, err
		}
	}
	if l.net, err = lockOctet(); err != nil {
		return l, err
	}

	bg, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	start := time.Now()
	l.clusters = make([]*Cluster, len(o.Clusters))
	errs := make([]error, len(o.Clusters))
	var wg sync.WaitGroup
	for i, name := range o.Clusters {
		c := &Cluster{
			Name:             name,
			Index:            i + 1,
			Kubeconfig:       l.Kubeconfig,
			PodCIDR:          podCIDR(l.net.octet, i+1),
			NodeIP:           nodeIP(l.net.octet, i+1),
			LoadBalancerCIDR: lbCIDR(l.net.octet, i+1, o.LabLoadBalancers),
			dir:              filepath.Join(o.Dir, name),
			octet:            l.net.octet,
			certManager:      o.CertManager,
			noApprover:       o.CertManagerWithoutApprover,
			cmWebhook:        o.CertManagerWebhook,
			realIstio:        o.RealIstio,
			private:          o.PrivateAPIServers,
		}
		l.clusters[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(ctx, l.BinDir, crds, logw)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return l, err
	}
	if err := l.writeKubeconfig(); err != nil {
		return l, err
	}
	if o.RealIstio {
		if err := l.startIstio(bg); err != nil {
			return l, err
		}
	}
	for _, c := range l.clusters {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			runLoadBalancer(bg, c, logw)
		}()
		if !o.RealIstio {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				runGatewayInjection(bg, c, logw)
			}()
		}
		if o.RealIstio {
			l.wg.Add(1)
			go func() { defer l.wg.Done(); runAPIEndpoint(bg, c, logw) }()
		}
	}
	fmt.Fprintf(logw, "lab: %d cluster(s) ready in %s; KUBECONFIG=%s\n", len(l.clusters), time.Since(start).Round(100*time.Millisecond), l.Kubeconfig)
	return l, nil
}

// lockDir makes dir this lab's, refusing one that a running lab holds.
func (l *Lab) lockDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lab dir %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lab.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lab dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(filepath.Join(dir, "lab.pid"))
		f.Close()
		return fmt.Errorf("lab dir %s is in use by a running lab (pid %s): stop it first (flotilla-lab down)", dir, strings.TrimSpace(string(pid)))
	}
	l.dirLock = f
	return os.WriteFile(filepath.Join(dir, "lab.pid"), []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o600)
}

// Stop stops every cluster and removes the lab's data. It is safe to call
// more than once and on a partly started lab.
func (l *Lab) Stop() error {
	if l == nil {
		return nil
	}
	l.stopOnce.Do(func() {
		if l.cancel != nil {
			l.cancel()
		}
		l.wg.Wait()
		var wg sync.WaitGroup
		for _, c := range l.clusters {
			if c == nil {
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); c.stop() }()
		}
		wg.Wait()
		l.net.release()
		if l.Dir != "" {
			entries, _ := os.ReadDir(l.Dir)
			for _, e := range entries {
				if e.Name() != "lab.lock" {
					os.RemoveAll(filepath.Join(l.Dir, e.Name()))
				}
			}
			if l.tempDir {
				os.RemoveAll(l.Dir)
			} else {
				os.Remove(filepath.Join(l.Dir, "lab.lock"))
			}
		}
		if l.dirLock != nil {
			l.dirLock.Close()
		}
	})
	return nil
}

// PIDs lists the process ids of every lab component, for diagnostics.
func (l *Lab) PIDs() map[string]int {
	out := map[string]int{}
	for _, c := range l.clusters {
		for _, p := range c.procs {
			out[c.Name+"/"+p.name] = p.pid()
		}
	}
	return out
}

func (l *Lab) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	for _, c := range l.clusters {
		cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.CAData}
		cfg.AuthInfos[c.Name+"-admin"] = &clientcmdapi.AuthInfo{Token: c.Token}
		cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name + "-admin"}
	}
	cfg.CurrentContext = l.clusters[0].Name
	return clientcmd.WriteToFile(*cfg, l.Kubeconfig)
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

func (c *Cluster) componentKubeconfig() string { return filepath.Join(c.dir, "admin.kubeconfig") }

func (c *Cluster) writeComponentKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.Token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "admin"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, c.componentKubeconfig())
}
