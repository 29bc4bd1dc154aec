package cli_test

import (
	"bufio"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// TestKilledApplyConvergesOnEtcd is TestKilledApplyConverges on the etcd
// backend (a three-member lab etcd): SIGKILL `flotilla apply` at several
// points, re-run it, and the end state is the same, with one root. The
// killed apply's lock is freed by its lease; the re-run waits for that.
func TestKilledApplyConvergesOnEtcd(t *testing.T) {
	l := testLab.Get(t)
	ec := lab.StartTestEtcd(t, 3)
	for i, killAfter := range []int{1, 3, 8, 17, 30} {
		t.Run(fmt.Sprintf("kill after line %d", killAfter), func(t *testing.T) {
			resetClusters(t, l)
			e := keyedEnv(t)
			e.state = ec.StateURL(fmt.Sprintf("/crash%d", i))
			mesh := writeMesh(t, e.dir, l.Kubeconfig)
			c := e.cmd("apply", "-f", mesh)
			stderr, err := c.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stderr)
			lines, killed := 0, false
			for sc.Scan() {
				lines++
				if lines == killAfter {
					_ = c.Process.Signal(syscall.SIGKILL)
					killed = true
					break
				}
			}
			_ = c.Wait()
			start := time.Now()
			if _, stderr, code := e.run(t, "apply", "-f", mesh); code != 0 {
				t.Fatalf("re-run after the kill: exit %d: %s", code, stderr)
			}
			t.Logf("run %d: killed=%v after %d progress lines; the re-run took %s", i, killed, lines, time.Since(start).Round(time.Millisecond))
			assertConverged(t, l, e)
		})
	}
}
