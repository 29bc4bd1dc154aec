package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is one lab component running in its own process group, so that
// stopping it also stops whatever it forked.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startProcess(name, bin string, args []string, logPath string) (*process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Pdeathsig: if whoever started the lab dies hard, its clusters die too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
	// Children that left the group's leader behind still share its group id.
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
}

// failure describes an early exit with the last lines of the log.
func (p *process) failure() error {
	data, _ := os.ReadFile(p.log)
	for _, l := range strings.Split(string(data), "\n") {
		// cobra-based components say why on one "Error: ..." line after their usage text.
		if strings.HasPrefix(l, "Error: ") {
			return fmt.Errorf("%s exited (%v): %s", p.name, p.err, l)
		}
	}
	return fmt.Errorf("%s exited (%v): %s", p.name, p.err, tail(p.log, 3))
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(data, nil))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// freePorts reserves n distinct loopback ports. The kernel may hand one out
// again before the component binds it; Start retries a cluster whose
// component failed to bind.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var errAddrInUse = errors.New("address already in use")

func bindFailure(log string) bool {
	data, _ := os.ReadFile(log)
	return bytes.Contains(data, []byte("address already in use"))
}
