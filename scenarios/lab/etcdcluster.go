package lab

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// EtcdCluster is a multi-member etcd cluster on loopback, from the lab's etcd
// binary: the hub's shared state in replica tests. Members can be stopped
// and started again (same data directory) to take quorum away and back.
type EtcdCluster struct {
	bin  string
	dir  string
	name string
	// tls, when set, has clients reach the members over TLS with a client
	// certificate (etcd's --client-cert-auth).
	tls *EtcdTLS

	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	name                 string
	clientPort, peerPort int
	dataDir              string
	proc                 *process
}

// EtcdTLS are the PEM files of an etcd cluster that takes clients over TLS
// only with a certificate its CA signed: the CA, and a client's pair.
type EtcdTLS struct {
	CACert, ClientCert, ClientKey string
	serverCert, serverKey         string
}

// StartEtcdCluster starts n members in dir and waits until every one answers.
func StartEtcdCluster(ctx context.Context, bin, dir string, n int) (*EtcdCluster, error) {
	return startEtcdCluster(ctx, bin, dir, n, false)
}

// StartEtcdClusterTLS is StartEtcdCluster with client TLS and client
// certificate authentication; TLS() names the files a client needs.
func StartEtcdClusterTLS(ctx context.Context, bin, dir string, n int) (*EtcdCluster, error) {
	return startEtcdCluster(ctx, bin, dir, n, true)
}

func startEtcdCluster(ctx context.Context, bin, dir string, n int, withTLS bool) (*EtcdCluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &EtcdCluster{bin: bin, dir: dir, name: "flotilla-" + filepath.Base(dir)}
	if withTLS {
		if c.tls, err = writeEtcdTLS(filepath.Join(dir, "tls")); err != nil {
			return nil, err
		}
	}
	var initial []string
	for i := range n {
		m := &etcdMember{name: fmt.Sprintf("e%d", i), clientPort: ports[2*i], peerPort: ports[2*i+1], dataDir: filepath.Join(dir, fmt.Sprintf("e%d", i))}
		c.members = append(c.members, m)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, m.peerPort))
	}
	for i := range c.members {
		if err := c.start(i, strings.Join(initial, ",")); err != nil {
			c.Close()
			return nil, err
		}
	}
	for i := range c.members {
		if err := c.waitListening(ctx, i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *EtcdCluster) start(i int, initial string) error {
	m := c.members[i]
	if err := os.MkdirAll(m.dataDir, 0o700); err != nil {
		return err
	}
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	args := []string{
		"--name", m.name, "--data-dir", m.dataDir,
		"--listen-client-urls", fmt.Sprintf("%s://127.0.0.1:%d", scheme, m.clientPort),
		"--advertise-client-urls", fmt.Sprintf("%s://127.0.0.1:%d", scheme, m.clientPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
		"--initial-cluster-token", c.name,
		"--log-level", "warn",
	}
	if initial != "" {
		args = append(args, "--initial-cluster", initial, "--initial-cluster-state", "new")
	}
	if t := c.tls; t != nil {
		args = append(args, "--cert-file", t.serverCert, "--key-file", t.serverKey,
			"--trusted-ca-file", t.CACert, "--client-cert-auth")
	}
	p, err := startProcess("etcd "+m.name, c.bin, args, filepath.Join(c.dir, m.name+".log"))
	if err != nil {
		return err
	}
	m.proc = p
	return nil
}

func (c *EtcdCluster) waitListening(ctx context.Context, i int) error {
	m := c.members[i]
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.clientPort), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if m.proc.exited() {
			return m.proc.failure()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd %s: not listening: %w", m.name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Endpoints are the members' client addresses, host:port.
func (c *EtcdCluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", m.clientPort))
	}
	return out
}

// StateURL is the --state that names this cluster under prefix, with the
// client's TLS files when the cluster takes TLS clients only.
func (c *EtcdCluster) StateURL(prefix string) string {
	u := "etcd://" + strings.Join(c.Endpoints(), ",") + "/?prefix=" + prefix
	if t := c.tls; t != nil {
		u += "&cacert=" + t.CACert + "&cert=" + t.ClientCert + "&key=" + t.ClientKey
	}
	return u
}

// TLS names the CA and client files of a TLS cluster (nil without TLS).
func (c *EtcdCluster) TLS() *EtcdTLS { return c.tls }

// writeEtcdTLS makes a CA, a serving certificate for 127.0.0.1 and a
// client certificate under dir.
func writeEtcdTLS(dir string) (*EtcdTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := newTestCA("flotilla-lab etcd CA")
	if err != nil {
		return nil, err
	}
	t := &EtcdTLS{
		CACert:     filepath.Join(dir, "ca.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
		serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
	}
	if err := os.WriteFile(t.CACert, ca.certPEM, 0o600); err != nil {
		return nil, err
	}
	if err := ca.issueTo(t.serverCert, t.serverKey, "etcd", []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	if err := ca.issueTo(t.ClientCert, t.ClientKey, "flotilla-hub", nil, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, err
	}
	return t, nil
}

// Stop stops member i (SIGTERM, then SIGKILL).
func (c *EtcdCluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.members[i].proc; p != nil {
		p.stop(5 * time.Second)
	}
}

// Restart starts member i again on its data directory.
func (c *EtcdCluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	err := c.start(i, "")
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.waitListening(ctx, i)
}

// Close stops every member.
func (c *EtcdCluster) Close() {
	for i := range c.members {
		c.Stop(i)
	}
}
