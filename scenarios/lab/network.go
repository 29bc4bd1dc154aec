package lab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// The lab's address plan. Each running lab holds one octet L (10-250),
// locked for its lifetime so that concurrent labs (parallel test packages,
// a demo beside a test run) never hand out the same address. Cluster i of
// the lab (1-based) gets:
//
//	node IP              10.L.0.i
//	pods                 10.L.i.0/24
//	LoadBalancer ingress 127.L.i.10-250, or with
//	                     Options.LabLoadBalancers 10.L.(100+i).10-250
//	services             172.20.0.0/16 (per cluster, as in real clusters)
//
// Pod and node addresses are not loopback: the API server rejects loopback
// addresses in EndpointSlices. Nothing is ever sent to 10.L/16: the lab and
// the data-plane emulation use each address's loopback stand-in (Loopback,
// Dialable). Load-balancer addresses are loopback by default, so that the
// hub and an istiod on the host reach a gateway as any client would (an
// API server read through its gateway); Istio's remote profile needs them
// off loopback (LabLoadBalancers), as it puts the primary's gateway address
// (remotePilotAddress) in an EndpointSlice.
const (
	minOctet       = 10
	maxOctet       = 250
	serviceCIDR    = "172.20.0.0/16"
	kubernetesSvc  = "172.20.0.1"
	lbFirst, lbEnd = 10, 250
	// maxClusters keeps lab load-balancer addresses 10.L.(100+i).n
	// within Loopback's reach (third octet < 156).
	maxClusters = 55
)

// netLock holds one lab's octet.
type netLock struct {
	octet int
	f     *os.File
}

func lockOctet() (*netLock, error) {
	dir := filepath.Join(os.TempDir(), "flotilla-lab-net")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for o := minOctet; o <= maxOctet; o++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", o)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		return &netLock{octet: o, f: f}, nil
	}
	return nil, fmt.Errorf("no free lab network: %d labs are running", maxOctet-minOctet+1)
}

func (n *netLock) release() {
	if n != nil && n.f != nil {
		n.f.Close()
	}
}

func podCIDR(octet, i int) string { return fmt.Sprintf("10.%d.%d.0/24", octet, i) }
func nodeIP(octet, i int) string  { return fmt.Sprintf("10.%d.0.%d", octet, i) }

// lbCIDR is cluster i's load-balancer pool: loopback, or lab addresses.
func lbCIDR(octet, i int, labAddresses bool) string {
	if labAddresses {
		return fmt.Sprintf("10.%d.%d.0/24", octet, 100+i)
	}
	return fmt.Sprintf("127.%d.%d.0/24", octet, i)
}

// lbIP is address n of a load-balancer pool.
func lbIP(pool *net.IPNet, n int) net.IP {
	ip := slices.Clone(pool.IP.To4())
	ip[3] = byte(n)
	return ip
}
