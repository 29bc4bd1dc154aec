package cli_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/cli"
)

// TestHubKilledMidReconcile: the hub is killed (SIGKILL) at the third step
// of a reconcile pass that repairs a deleted cacerts; a hub started again on
// the same state converges at its next pass.
func TestHubKilledMidReconcile(t *testing.T) {
	l := testLab.Get(t)
	e := appliedEnv(t, l)
	ctx := context.Background()
	west := l.Cluster("west").Client()
	if err := west.CoreV1().Secrets("istio-system").Delete(ctx, "cacerts", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	token := filepath.Join(e.dir, "hub.token")
	server := func(crashAt string) *exec.Cmd {
		c := e.cmd("server", "--listen", addr, "--token-file", token, "--interval", "1s", "--log-level", "warn")
		if crashAt != "" {
			c.Env = append(c.Env, cli.CrashEnv+"="+crashAt)
		}
		return c
	}

	first := server("3")
	var stderr bytes.Buffer
	first.Stderr = &stderr
	err = first.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || !strings.Contains(stderr.String(), "crash point 3: ") {
		t.Fatalf("the hub was not killed mid-reconcile (%v):\n%s", err, stderr.String())
	}
	t.Logf("hub killed: %s", lastLine(stderr.String()))

	second := server("")
	var log2 bytes.Buffer
	second.Stderr = &log2
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		second.Process.Signal(syscall.SIGTERM)
		second.Wait()
	}()
	// Wait for the second hub's passes to restore cacerts; the deadline only
	// bounds a hub that never converges.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, err := west.CoreV1().Secrets("istio-system").Get(ctx, "cacerts", metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			t.Fatalf("cacerts never came back: %v\nhub log:\n%s", err, log2.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	assertConverged(t, l, e)
}
