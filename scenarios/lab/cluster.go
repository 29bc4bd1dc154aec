package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"
)

// startAttempts bounds retries of a cluster whose component lost its port
// to another process between reservation and bind.
const startAttempts = 3

func (c *Cluster) start(ctx context.Context, bin string, crds []crd, logw io.Writer) error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		err = c.startOnce(ctx, bin, crds, logw)
		if err != nil && !errors.Is(err, errAddrInUse) && c.lostPort() {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		if err == nil {
			return nil
		}
		c.stop()
		if !errors.Is(err, errAddrInUse) || ctx.Err() != nil {
			break
		}
		fmt.Fprintf(logw, "lab: %s: a port was taken, retrying (%d/%d)\n", c.Name, attempt, startAttempts)
	}
	return fmt.Errorf("cluster %s: %w", c.Name, err)
}

func (c *Cluster) startOnce(ctx context.Context, bin string, crds []crd, logw io.Writer) error {
	t0 := time.Now()
	os.RemoveAll(c.dir)
	pkiDir := filepath.Join(c.dir, "pki")
	logDir := filepath.Join(c.dir, "logs")
	for _, d := range []string{pkiDir, logDir, filepath.Join(c.dir, "etcd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	cp, err := writeClusterPKI(pkiDir, c.Name, net.ParseIP(kubernetesSvc))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	c.CAData = cp.CACert
	c.Token = randomToken()
	if err := os.WriteFile(filepath.Join(pkiDir, "tokens.csv"), []byte(c.Token+",lab-admin,lab-admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, kwokPort := ports[0], ports[1], ports[2], ports[3]
	c.Server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	c.KwokAddress = fmt.Sprintf("127.0.0.1:%d", kwokPort)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)

	extraArgs := map[string][]string{}
	run := func(name string, args ...string) (*process, error) {
		p, err := startProcess(name, filepath.Join(bin, name), append(args, extraArgs[name]...), filepath.Join(logDir, name+".log"))
		if err != nil {
			return nil, err
		}
		c.procs = append(c.procs, p)
		return p, nil
	}

	etcd, err := run("etcd",
		"--name=lab", "--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=lab="+peerURL,
		// A lab's data is thrown away: durability buys nothing here.
		"--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
		"--listen-metrics-urls=", "--snapshot-count=100000")
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, etcd, etcdURL+"/health", nil, "", 30*time.Second); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	if c.realIstio {
		cfg, err := c.startClusterNet(c.dir)
		if err != nil {
			return err
		}
		extraArgs["kube-apiserver"] = []string{"--egress-selector-config-file=" + cfg}
	}
	api, err := run("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort),
		"--tls-cert-file="+filepath.Join(pkiDir, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(pkiDir, "apiserver.key"),
		"--token-auth-file="+filepath.Join(pkiDir, "tokens.csv"),
		"--client-ca-file="+filepath.Join(pkiDir, "ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(pkiDir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pkiDir, "sa.key"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range="+serviceCIDR,
		"--allow-privileged=true",
		"--cert-dir="+pkiDir,
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--endpoint-reconciler-type=none",
		"--shutdown-delay-duration=0s",
		// exec, logs and port-forward reach kwok (the node's kubelet) on
		// loopback: the node's InternalDNS address, never its 10.L.0.i.
		// Without --kubelet-certificate-authority the API server does not
		// verify kwok's self-signed serving certificate, as with kubelets.
		"--kubelet-preferred-address-types=InternalDNS",
		"--v=0")
	if err != nil {
		return err
	}
	// Minutes, not seconds: on a starved machine the API server's start
	// (OpenAPI, post-start hooks) is CPU-bound.
	if err := waitHTTP(ctx, api, c.Server+"/readyz", c.CAData, c.Token, 4*time.Minute); err != nil {
		if bindFailure(api.log) {
			return errAddrInUse
		}
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	if err := c.writeComponentKubeconfig(); err != nil {
		return err
	}
	kcfg := c.componentKubeconfig()
	if _, err := run("kube-controller-manager",
		"--kubeconfig="+kcfg,
		"--authentication-kubeconfig="+kcfg, "--authorization-kubeconfig="+kcfg,
		"--controllers=namespace,serviceaccount,serviceaccount-token,deployment,replicaset,statefulset,daemonset,endpointslice,garbagecollector",
		"--service-account-private-key-file="+filepath.Join(pkiDir, "sa.key"),
		"--root-ca-file="+filepath.Join(pkiDir, "ca.crt"),
		"--use-service-account-credentials=false",
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--v=0"); err != nil {
		return err
	}
	if _, err := run("kube-scheduler",
		"--kubeconfig="+kcfg,
		"--authentication-kubeconfig="+kcfg, "--authorization-kubeconfig="+kcfg,
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--v=0"); err != nil {
		return err
	}
	execCfg := filepath.Join(c.dir, "kwok-exec.yaml")
	execYAML, err := c.kwokExecConfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(execCfg, execYAML, 0o600); err != nil {
		return err
	}
	// kwok watches Exec objects from its start: their CRD comes first.
	kwokCRD, err := kwokCRDs()
	if err != nil {
		return err
	}
	if err := installCRDs(ctx, c.RESTConfig(), kwokCRD); err != nil {
		return fmt.Errorf("kwok CRDs: %w", err)
	}
	stages, err := labStages(filepath.Join(bin, stagesFile))
	if err != nil {
		return err
	}
	stagesCfg := filepath.Join(c.dir, stagesFile)
	if err := os.WriteFile(stagesCfg, stages, 0o644); err != nil {
		return err
	}
	if _, err := run("kwok",
		"--kubeconfig="+kcfg,
		"--config="+stagesCfg,
		"--config="+execCfg,
		"--enable-crds=Exec",
		"--node-port="+strconv.Itoa(kwokPort),
		"--manage-all-nodes=true",
		"--cidr="+c.PodCIDR,
		"--node-ip="+c.NodeIP,
		"--server-address="+c.KwokAddress,
		"--node-lease-duration-seconds=40"); err != nil {
		return err
	}

	cs := c.Client()
	if err := installCRDs(ctx, c.RESTConfig(), crds); err != nil {
		return fmt.Errorf("CRDs: %w", err)
	}
	if c.cmWebhook {
		// Before the controllers, so that nothing they write escapes it.
		if err := c.startCertManagerWebhook(ctx, run, kcfg); err != nil {
			return err
		}
	}
	if c.certManager {
		if err := c.startCertManager(run, kcfg); err != nil {
			return err
		}
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: c.Name + "-node",
			Labels: map[string]string{
				"kubernetes.io/hostname": c.Name + "-node",
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
		},
		// Status is kept on create; kwok fills in the rest and keeps these.
		// The kubelet version is the lab's Kubernetes version, as a real
		// node reports it: kwok's own ("kwok-v0.8.0") is not a version, and
		// readers of it decide by it (istiod's injector gives native
		// sidecars only to nodes it reads as 1.33 or later).
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: c.NodeIP},
				{Type: corev1.NodeHostName, Address: c.Name + "-node"},
				{Type: corev1.NodeInternalDNS, Address: "127.0.0.1"},
			},
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: KubernetesVersion},
		},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node: %w", err)
	}
	// Ready means: kwok marked the node Ready (pods can schedule) and the
	// controller manager created the default service account (pods can be
	// admitted).
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		for _, p := range c.procs {
			if p.exited() {
				return false, p.failure()
			}
		}
		n, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil || !nodeReady(n) {
			return false, nil
		}
		_, err = cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for node %s Ready and the default service account: %w", node.Name, err)
	}
	// The API server taints a new node not-ready; kube-controller-manager's
	// node lifecycle controller would lift it, but that controller also
	// evicts pods whenever a starved kwok misses a heartbeat. The lab lifts
	// the taint once, itself.
	untaint := []byte(`{"spec":{"taints":null}}`)
	if _, err := cs.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, untaint, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("untaint node %s: %w", node.Name, err)
	}
	fmt.Fprintf(logw, "lab: %s ready at %s (%s)\n", c.Name, c.Server, time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// ProxyCapturePort is where the data-plane emulator takes the HTTP requests
// of processes exec'd in a cluster's pods, as Envoy's outbound capture port.
const ProxyCapturePort = 15001

// Loopback maps a lab pod, node or load-balancer address 10.L.b.c
// (b < 156) to the loopback address 127.L.(100+b).c that stands in for it:
// the lab never sends packets to 10.L/16, which this host does not route.
func Loopback(ip net.IP) (net.IP, bool) {
	v4 := ip.To4()
	if v4 == nil || v4[0] != 10 || v4[2] > 155 {
		return nil, false
	}
	return net.IPv4(127, v4[1], 100+v4[2], v4[3]), true
}

// Dialable is where the lab reaches ip: a loopback address as is, a lab
// address at its loopback stand-in (Loopback); false for anything else,
// which the lab never sends to.
func Dialable(ip net.IP) (net.IP, bool) {
	if ip != nil && ip.IsLoopback() {
		return ip, true
	}
	return Loopback(ip)
}

// kwokExecConfig makes kwok answer exec in any pod by running the command
// locally, with an HTTP proxy at the node's loopback capture address: the
// process's requests reach the cluster's emulated data plane. A pod with an
// Exec of its own (PodExec, written by the data plane once the pod runs)
// gets its own capture address instead; this is the fallback before that.
func (c *Cluster) kwokExecConfig() ([]byte, error) {
	capture := "127.0.0.1:1" // no node loopback address: requests fail
	if lb, ok := Loopback(net.ParseIP(c.NodeIP)); ok {
		capture = net.JoinHostPort(lb.String(), strconv.Itoa(ProxyCapturePort))
	}
	return yaml.Marshal(map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1",
		"kind":       "ClusterExec",
		"metadata":   map[string]any{"name": "lab-exec"},
		"spec": map[string]any{
			"execs": []any{map[string]any{"local": map[string]any{"envs": captureEnv(capture, c.Name)}}},
		},
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c *Cluster) stop() {
	// Stop in reverse: clients before the API server, the API server before etcd.
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(3 * time.Second)
	}
	c.procs = nil
	if c.net != nil {
		c.net.close()
		c.net = nil
	}
}

// waitHTTP polls url until it answers 200, the process exits, or timeout.
func waitHTTP(ctx context.Context, p *process, url string, ca []byte, token string, timeout time.Duration) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{}}
	if ca != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tr.TLSClientConfig.RootCAs = pool
	}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	defer tr.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		if p.exited() {
			return p.failure()
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s: %s", url, timeout, tail(p.log, 3))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(150 * time.Millisecond):
		}
	}
}

// lostPort reports whether any component failed because another process
// took its port between reservation and bind.
func (c *Cluster) lostPort() bool {
	for _, p := range c.procs {
		if p.exited() && bindFailure(p.log) {
			return true
		}
	}
	return false
}
