package lab

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Shared is one lab shared by all tests of a package: started on first use,
// stopped when the package's tests end, also on failure or interrupt.
//
//	var testLab = lab.NewShared("east", "west")
//	func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }
//	func TestX(t *testing.T) { east := testLab.Get(t).Cluster("east") }
type Shared struct {
	opts Options

	once sync.Once
	mu   sync.Mutex
	lab  *Lab
	err  error
}

// NewShared describes a lab with the named clusters, started on first Get.
func NewShared(clusters ...string) *Shared {
	return &Shared{opts: Options{Clusters: clusters}}
}

// NewSharedWith is NewShared with full options.
func NewSharedWith(opts Options) *Shared { return &Shared{opts: opts} }

// Get returns the running lab, starting it on first use; it fails the test
// when the lab cannot start.
func (s *Shared) Get(t testing.TB) *Lab {
	t.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		opts := s.opts
		if opts.Log == nil {
			opts.Log = os.Stderr
		}
		l, err := Start(ctx, opts)
		s.mu.Lock()
		s.lab, s.err = l, err
		s.mu.Unlock()
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		t.Fatalf("lab: %v", s.err)
	}
	return s.lab
}

// Run runs the package's tests and stops the lab afterwards. An interrupt or
// SIGTERM stops the lab before the process exits, so no cluster is orphaned.
func (s *Shared) Run(m *testing.M) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case got := <-sig:
			fmt.Fprintf(os.Stderr, "lab: %v: stopping clusters\n", got)
			s.stop()
			os.Exit(130)
		case <-done:
		}
	}()
	code := m.Run()
	close(done)
	signal.Stop(sig)
	s.stop()
	return code
}

func (s *Shared) stop() {
	s.mu.Lock()
	l := s.lab
	s.lab = nil
	s.mu.Unlock()
	if l != nil {
		if err := l.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "lab: stop: %v\n", err)
		}
	}
}

// StartTestEtcd starts an n-member etcd cluster from the lab's etcd (built
// first when the cache lacks it, as a lab is) for one test, closed at its
// end. A test that needs etcd fails without it rather than skipping.
func StartTestEtcd(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	return startTestEtcd(t, n, false)
}

// StartTestEtcdTLS is StartTestEtcd for a cluster that takes clients over
// TLS only, with a client certificate (its StateURL carries the files).
func StartTestEtcdTLS(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	return startTestEtcd(t, n, true)
}

func startTestEtcd(t testing.TB, n int, withTLS bool) *EtcdCluster {
	t.Helper()
	bctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin, err := EnsureBinaries(bctx, BuildOptions{Log: os.Stderr})
	if err != nil {
		t.Fatalf("lab etcd: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := startEtcdCluster(ctx, filepath.Join(bin, "etcd"), t.TempDir(), n, withTLS)
	if err != nil {
		t.Fatalf("lab etcd: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// RunShared runs a package's tests once and stops every one of labs
// afterwards (Shared.Run for a package with several labs).
func RunShared(m *testing.M, labs ...*Shared) int {
	if len(labs) == 0 {
		return m.Run()
	}
	defer func() {
		for _, s := range labs[1:] {
			s.stop()
		}
	}()
	return labs[0].Run(m)
}
