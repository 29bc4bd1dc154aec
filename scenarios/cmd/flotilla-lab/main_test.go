package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as flotilla-lab, so the commands run as users run
// them: a separate process, its exit code and its output.
func TestMain(m *testing.M) {
	if os.Getenv("FLOTILLA_LAB_BE_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func run(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), "FLOTILLA_LAB_BE_MAIN=1"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nothing, but runs subprocesses")
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"name not a DNS-1123 label", nil, []string{"up", "East_1"}, `cluster name "East_1" is not a DNS-1123 label`},
		{"duplicate names", nil, []string{"up", "east", "east"}, `cluster name "east" given twice`},
		{"no names", nil, []string{"up"}, "requires at least 1 arg"},
		{"an approver left out of no cert-manager", nil, []string{"up", "east", "--without-approver"}, "--without-approver needs --cert-manager"},
		{"a webhook without cert-manager", nil, []string{"up", "east", "--webhook"}, "--webhook needs --cert-manager"},
		{"missing binaries without module proxy", []string{
			"FLOTILLA_LAB_CACHE=" + t.TempDir(), "GOMODCACHE=" + t.TempDir(), "GOPROXY=off",
		}, []string{"up", "east"}, "cannot get Go modules (is the Go module proxy reachable?)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, stderr, code := run(t, tc.env, append(tc.args, "--dir", dir)...)
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; stderr %q", stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "flotilla-lab: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("last stderr line %q, want one naming %q", last, tc.want)
			}
			for _, l := range lines[:len(lines)-1] {
				if !strings.HasPrefix(l, "lab: ") {
					t.Fatalf("stderr has more than progress before the error: %q", stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
				t.Fatal("a failed up left a lab state behind")
			}
		})
	}
}

// TestUpBusyDown runs the lifecycle a user runs: up, a second up on the busy
// directory, env, down; afterwards no lab process is left.
func TestUpBusyDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a lab cluster")
	}
	dir := filepath.Join(t.TempDir(), "lab")
	t.Cleanup(func() { run(t, nil, "down", "--dir", dir) })
	out, stderr, code := run(t, nil, "up", "solo", "--dir", dir)
	if code != 0 {
		t.Fatalf("up: exit %d: %s", code, stderr)
	}
	want := "export KUBECONFIG=" + filepath.Join(dir, "kubeconfig")
	if strings.TrimSpace(out) != want {
		t.Fatalf("up printed %q, want %q", out, want)
	}
	if out, _, code := run(t, nil, "env", "--dir", dir); code != 0 || strings.TrimSpace(out) != want {
		t.Fatalf("env: exit %d, printed %q", code, out)
	}
	_, stderr, code = run(t, nil, "up", "other", "--dir", dir)
	if code == 0 || !strings.Contains(stderr, "is in use by a running lab") {
		t.Fatalf("second up on a busy dir: exit %d, stderr %q", code, stderr)
	}
	var st state
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.PIDs) < 5 {
		t.Fatalf("state lists %d component processes, want etcd, apiserver, controller-manager, scheduler, kwok", len(st.PIDs))
	}
	if _, stderr, code := run(t, nil, "down", "--dir", dir); code != 0 {
		t.Fatalf("down: exit %d: %s", code, stderr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for name, pid := range st.PIDs {
		for alive(pid) && !zombie(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (pid %d) still running after down", name, pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if alive(st.PID) && !zombie(st.PID) {
		t.Fatalf("supervisor (pid %d) still running after down", st.PID)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("lab dir %s still exists after down", dir)
	}
}

// zombie reports whether pid has exited but not been reaped (it then still
// answers kill 0); the lab's processes are reaped by their own parents.
func zombie(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	f := strings.Fields(string(data))
	return len(f) > 2 && f[2] == "Z"
}
