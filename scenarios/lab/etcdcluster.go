package lab

import (
	"context"
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

	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	name                 string
	clientPort, peerPort int
	dataDir              string
	proc                 *process
}

// StartEtcdCluster starts n members in dir and waits until every one answers.
func StartEtcdCluster(ctx context.Context, bin, dir string, n int) (*EtcdCluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &EtcdCluster{bin: bin, dir: dir, name: "flotilla-" + filepath.Base(dir)}
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
	args := []string{
		"--name", m.name, "--data-dir", m.dataDir,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", m.clientPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", m.clientPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
		"--initial-cluster-token", c.name,
		"--log-level", "warn",
	}
	if initial != "" {
		args = append(args, "--initial-cluster", initial, "--initial-cluster-state", "new")
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

// StateURL is the --state that names this cluster under prefix.
func (c *EtcdCluster) StateURL(prefix string) string {
	return "etcd://" + strings.Join(c.Endpoints(), ",") + "/?prefix=" + prefix
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
