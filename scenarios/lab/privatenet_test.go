package lab

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// TestPrivateNetLabAddresses: inside a cluster's private network, a
// load-balancer address of either plan reaches its listener on the host
// (a lab address through its loopback stand-in, put on the namespace's lo),
// and an address the lab did not forward is refused there.
func TestPrivateNetLabAddresses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root, as the lab's private networks do")
	}
	lock, err := lockOctet()
	if err != nil {
		t.Fatal(err)
	}
	defer lock.release()
	n := &privateNet{name: fmt.Sprintf("flotilla-lab-%d-test", lock.octet), log: io.Discard, lns: map[string]net.Listener{}, addrs: map[string]bool{}}
	n.path = "/var/run/netns/" + n.name
	_ = exec.Command("ip", "netns", "del", n.name).Run()
	for _, args := range [][]string{{"netns", "add", n.name}, {"-n", n.name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	defer n.close()

	for _, tc := range []struct {
		name string
		addr net.IP // the load-balancer address istiod dials
	}{
		{"loopback plan", lbIP(mustCIDR(t, lbCIDR(lock.octet, 1, false)), 10)},
		{"lab plan", lbIP(mustCIDR(t, lbCIDR(lock.octet, 1, true)), 10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stand, ok := Dialable(tc.addr)
			if !ok {
				t.Fatalf("%s has no stand-in", tc.addr)
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(stand.String(), "0"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go acceptEach(ln, func(c net.Conn) { fmt.Fprintf(c, "gateway %s\n", tc.addr); c.Close() })
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			if !tc.addr.IsLoopback() {
				if err := n.onLo(tc.addr); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.outward(net.JoinHostPort(tc.addr.String(), port), ln.Addr().String()); err != nil {
				t.Fatal(err)
			}
			var got string
			err = inNetns(n.path, func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.addr.String(), port), 5*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				got, err = bufio.NewReader(c).ReadString('\n')
				return err
			})
			if err != nil || got != fmt.Sprintf("gateway %s\n", tc.addr) {
				t.Errorf("inside: dial %s:%s: %q, %v; want the gateway's answer", tc.addr, port, got, err)
			}
			// Another port of the same address was not forwarded.
			err = inNetns(n.path, func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.addr.String(), "1"), 2*time.Second)
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil {
				t.Errorf("inside: %s:1 answered, want refused", tc.addr)
			}
		})
	}
}

func mustCIDR(t *testing.T, cidr string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
