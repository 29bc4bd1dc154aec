package e2e

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVerifyThroughHub: `flotilla --hub URL verify` runs the check on the
// hub, with the hub's connections and the spec it last applied; the client
// has no kubeconfig, no state and no spec file.
func TestVerifyThroughHub(t *testing.T) {
	s := startShared(t)
	s.apply("multi-primary", multiNetwork...)
	hubFlags := s.startHub()

	// The client's environment names no cluster and no state.
	client := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "FLOTILLA_") {
			env = append(env, kv)
		}
	}
	env = append(env, "KUBECONFIG="+filepath.Join(client, "no-kubeconfig"), "FLOTILLA_STATE="+filepath.Join(client, "no-state.db"))
	c := exec.Command(flotilla, append([]string{"verify", "-o", "json", "--requests", "4"}, hubFlags...)...)
	c.Dir, c.Env = client, env
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r verifyResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("verify through the hub: exit %d, output is not JSON: %v\n%s\n%s", code, err, out.String(), errb.String())
	}
	wantAll(t, &r, code, "east", "west")
	if _, err := os.Stat(filepath.Join(client, "no-state.db")); err == nil {
		t.Error("verify through the hub created a local state")
	}
}

// startHub runs `flotilla server` on the scenario's state until the test
// ends and returns the flags that point a client at it.
func (s *scenario) startHub() []string {
	s.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	token, ca := filepath.Join(s.dir, "hub.token"), filepath.Join(s.dir, "hub-ca.pem")
	srv := exec.Command(flotilla, "server", "--listen", addr, "--token-file", token, "--tls-ca-out", ca, "--interval", "0")
	srv.Env = s.env
	var log bytes.Buffer
	srv.Stderr = &log
	if err := srv.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
		if s.t.Failed() {
			s.t.Logf("hub log:\n%s", log.String())
		}
	})
	flags := []string{"--hub", "https://" + addr, "--hub-token-file", token, "--hub-ca", ca}
	for deadline := time.Now().Add(time.Minute); ; {
		if _, _, code := s.exec(append([]string{"status"}, flags...)...); code == 0 {
			return flags
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the hub at %s did not answer within a minute:\n%s", addr, log.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
}
