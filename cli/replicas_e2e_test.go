package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// TestReplicaProcessKilled runs three `flotilla server` processes as
// replicas (one etcd state, one gossip ring, each reconciling the clusters
// the ring gives it), SIGKILLs the one that owns west, and deletes west's
// cacerts: the survivor the ring now names restores it, once the killed
// replica's fence lease has expired. The time from the kill to the restore
// is logged (the goal: under 15 s with default settings; the lab
// test uses --interval 1s).
func TestReplicaProcessKilled(t *testing.T) {
	l := testLab.Get(t)
	ec := lab.StartTestEtcd(t, 3)
	resetClusters(t, l)
	e := keyedEnv(t)
	e.state = ec.StateURL("/replicas")
	mesh := writeMesh(t, e.dir, l.Kubeconfig)
	if _, stderr, code := e.run(t, "apply", "-f", mesh); code != 0 {
		t.Fatalf("apply: %s", stderr)
	}
	gossipKey := filepath.Join(e.dir, "gossip.key")
	if _, stderr, code := e.run(t, "state", "keygen", "--out", gossipKey); code != 0 {
		t.Fatalf("keygen: %s", stderr)
	}
	token := filepath.Join(e.dir, "hub.token")
	if err := os.WriteFile(token, []byte("replica-test-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	type replica struct {
		name, api, ca string
		cmd           *exec.Cmd
		log           *bytes.Buffer
	}
	var reps []*replica
	var firstGossip string
	for i := range 3 {
		r := &replica{name: fmt.Sprintf("hub-%d", i), api: freeAddr(t), ca: filepath.Join(e.dir, fmt.Sprintf("ca-%d.pem", i)), log: &bytes.Buffer{}}
		gossip := freeAddr(t)
		args := []string{"server", "--name", r.name, "--listen", r.api, "--token-file", token, "--tls-ca-out", r.ca,
			"--gossip", gossip, "--gossip-key-file", gossipKey, "--interval", "1s", "--log-level", "warn"}
		if i == 0 {
			firstGossip = gossip
		} else {
			args = append(args, "--join", firstGossip)
		}
		r.cmd = e.cmd(args...)
		r.cmd.Stderr = r.log
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			_ = r.cmd.Wait()
		})
		reps = append(reps, r)
	}
	members := func(r *replica) (owners map[string]string, live int, err error) {
		c := e.cmd("--hub", "https://"+r.api, "--hub-token-file", token, "--hub-ca", r.ca, "hub", "members", "-o", "json")
		out, err := c.Output()
		if err != nil {
			return nil, 0, err
		}
		var ms struct {
			Owners  map[string]string `json:"owners"`
			Members []struct {
				Name     string   `json:"name"`
				State    string   `json:"state"`
				Clusters []string `json:"clusters"`
			} `json:"members"`
		}
		if err := json.Unmarshal(out, &ms); err != nil {
			return nil, 0, err
		}
		for _, m := range ms.Members {
			if m.State == "alive" {
				live++
			}
			for _, c := range m.Clusters {
				if ms.Owners[c] != m.Name {
					return nil, 0, fmt.Errorf("members: %s lists %s, owners name %s", m.Name, c, ms.Owners[c])
				}
			}
		}
		return ms.Owners, live, nil
	}
	var owner string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		owners, live, err := members(reps[0])
		if err == nil && live == 3 {
			owner = owners["west"]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replicas never formed a ring of 3 (last: %v, %d live)\nhub-0 log:\n%s", err, live, reps[0].log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// status, from any replica, names each cluster's owner as members does.
	c := e.cmd("--hub", "https://"+reps[1].api, "--hub-token-file", token, "--hub-ca", reps[1].ca, "status", "-o", "json")
	out, err := c.Output()
	if err != nil {
		t.Fatalf("status from %s: %v", reps[1].name, err)
	}
	var st struct {
		Clusters []struct {
			Name  string `json:"name"`
			Owner string `json:"owner"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	owners, _, err := members(reps[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Clusters {
		if c.Owner == "" || c.Owner != owners[c.Name] {
			t.Errorf("status names %q as %s's owner, members %q", c.Owner, c.Name, owners[c.Name])
		}
	}
	var victim, survivor *replica
	for _, r := range reps {
		if r.name == owner {
			victim = r
		} else if survivor == nil {
			survivor = r
		}
	}
	if victim == nil {
		t.Fatalf("members name %q as west's owner, not one of the replicas", owner)
	}
	// Let the owner finish a pass, so the kill lands on a running reconciler
	// (its fence's lease then outlives it).
	time.Sleep(2 * time.Second)

	ctx := context.Background()
	west := l.Cluster("west").Client()
	killed := time.Now()
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.cmd.Wait()
	if err := west.CoreV1().Secrets("istio-system").Delete(ctx, "cacerts", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := west.CoreV1().Secrets("istio-system").Get(ctx, "cacerts", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Since(killed) > 2*time.Minute {
			t.Fatalf("west's cacerts not restored 2 minutes after %s was killed\n%s log:\n%s", owner, survivor.name, survivor.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	restored := time.Since(killed)
	owners, _, err = members(survivor)
	if err != nil {
		t.Fatal(err)
	}
	if owners["west"] == owner || owners["west"] == "" {
		t.Errorf("%s names %q as west's owner after %s was killed", survivor.name, owners["west"], owner)
	}
	t.Logf("%s (pid %d, owner of west) SIGKILLed; west's cacerts deleted and restored after %s; owners now %v", owner, victim.cmd.Process.Pid, restored.Round(time.Millisecond), owners)
	assertConverged(t, l, e)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
