package realistio

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/scenarios/lab"
	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/spec"
)

// rotations is how many forced rotations run under traffic.
const rotations = 3

// rotateRate is the requests per second each cluster's curl client sends
// (two clusters: 200 per second in all).
const rotateRate = 100

var helloLine = regexp.MustCompile(`Hello version: (v\d+), instance: `)

// TestRotateUnderTraffic forces three rotations of every reader credential
// (flotilla federation rotate) while each cluster's curl client sends
// helloworld requests at 100 per second through its sidecar, whose
// endpoints come from the real istiods: no request may fail, and both
// versions keep answering each client (the remote version is reachable only
// while istiod reads the other cluster). istiod's /debug/clusterz, read
// through the API server's pod proxy as flotilla reads it, is polled all
// along: the other cluster must never be missing, timed out or closed.
// istiod's own log must say, after each rotation, that it replaced the
// remote cluster once the one built from the new secret synced; every
// replaced token is refused afterwards (401 on a real request).
//
// It also measures, as benchmark figures in the log: the time from the
// forced rotation to the last reading istiod switching to the new token
// (its "stopping previous cluster ... after new cluster synced" line), and
// the API writes and duration of a rotation against a full re-apply of the
// same spec, in the same run.
func TestRotateUnderTraffic(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	h, m := applyMultiPrimary(t, ctx, l)
	counter := &writeCounter{}
	h.Connect = func(c spec.Cluster, _ string) (*kube.Cluster, error) {
		lc := l.Cluster(c.Name)
		if lc == nil {
			return nil, fmt.Errorf("%s: no lab cluster", c.Name)
		}
		cfg := lc.RESTConfig()
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingRT{rt: rt, c: counter} })
		return kube.Connect(c.Name, cfg)
	}
	istiods := map[string]lab.IstiodInfo{}
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		waitReconciled(t, ctx, kc, c, "default")
		istiods[c.Name] = waitIstiodReady(t, ctx, c)
	}
	startEmulator(t, l)
	res, err := h.Verify(ctx, m, server.VerifyOptions{Keep: true})
	t.Cleanup(func() { removeSample(t, l) })
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if err := res.Err(); err != nil {
		t.Fatalf("verify before the rotations: %v", err)
	}
	other := map[string]string{"east": "west", "west": "east"}

	// Traffic: each cluster's curl client, through its own capture address.
	traffic := map[string]*trafficStats{}
	tctx, stopTraffic := context.WithCancel(ctx)
	var twg sync.WaitGroup
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		pods, err := kc.Kube.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{LabelSelector: "app=curl"})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("%s: curl pod: %v (%d pods)", c.Name, err, len(pods.Items))
		}
		capture, ok := lab.PodCaptureAddress(net.ParseIP(pods.Items[0].Status.PodIP))
		if !ok {
			t.Fatalf("%s: curl pod address %s outside the lab's plan", c.Name, pods.Items[0].Status.PodIP)
		}
		ts := &trafficStats{versions: map[string]int{}}
		traffic[c.Name] = ts
		twg.Add(1)
		go func() { defer twg.Done(); ts.run(tctx, capture, rotateRate) }()
	}

	// istiod's view, through the pod proxy, polled in each reading cluster.
	views := map[string]*clusterzStats{}
	var vwg sync.WaitGroup
	for _, c := range l.Clusters() {
		kc, err := c.Connect()
		if err != nil {
			t.Fatal(err)
		}
		vs := &clusterzStats{seen: map[string]int{}}
		views[c.Name] = vs
		in := istiods[c.Name]
		vwg.Add(1)
		go func() { defer vwg.Done(); vs.poll(tctx, kc, in, other[c.Name]) }()
	}

	time.Sleep(3 * time.Second) // traffic before the first rotation
	var switchTimes, rotationTimes []time.Duration
	var rotationWrites []int
	var replaced []replacedToken
	for i := range rotations {
		for target, reader := range map[string]string{"east": "west", "west": "east"} {
			replaced = append(replaced, replacedToken{target: target, token: remoteSecretToken(t, ctx, l.Cluster(reader), target)})
		}
		before := traffic["east"].snapshot(traffic["west"])
		counter.reset()
		start := time.Now()
		r, err := h.RotateReaders(ctx, nil, server.ReaderRotationOptions{})
		took := time.Since(start)
		if err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
		rotationTimes = append(rotationTimes, took)
		rotationWrites = append(rotationWrites, counter.total())
		for _, rr := range r.Readers {
			if !rr.OldTokenRefused || len(rr.Revoked) != 1 {
				t.Errorf("rotation %d: %s: %+v, want one token revoked and refused", i+1, rr.Cluster, rr)
			}
		}
		// When every reading istiod replaced its remote cluster with the one
		// built from the new secret: istiod's own log line.
		var last time.Duration
		for _, reader := range []string{"east", "west"} {
			at, err := istiodSwitched(istiods[reader].Log, other[reader], start)
			if err != nil {
				t.Errorf("rotation %d: istiod in %s: %v", i+1, reader, err)
				continue
			}
			last = max(last, at.Sub(start))
		}
		switchTimes = append(switchTimes, last)
		t.Logf("rotation %d: %s, %d API writes; every istiod on the new token %s after the rotation began; istiod synced %v",
			i+1, took.Round(time.Millisecond), rotationWrites[i], last.Round(time.Millisecond), syncedMillis(r))
		time.Sleep(3 * time.Second)
		after := traffic["east"].snapshot(traffic["west"])
		for c, ts := range map[string]*trafficStats{"east": traffic["east"], "west": traffic["west"]} {
			for _, v := range []string{"v1", "v2"} {
				if ts.count(v) <= before[c+"/"+v] {
					t.Errorf("rotation %d: no %s answer to %s's client during it (before %v, after %v)", i+1, v, c, before, after)
				}
			}
		}
	}
	time.Sleep(2 * time.Second)
	stopTraffic()
	twg.Wait()
	vwg.Wait()

	for _, c := range []string{"east", "west"} {
		ts := traffic[c]
		ts.mu.Lock()
		t.Logf("%s's client: %d requests in %s (%.0f/s), %d failed, answers %v, first errors %v",
			c, ts.sent, ts.duration().Round(time.Millisecond), float64(ts.sent)/ts.duration().Seconds(), ts.failed, ts.versions, ts.errors)
		if ts.failed != 0 {
			t.Errorf("%s: %d of %d requests failed during the rotations: %v", c, ts.failed, ts.sent, ts.errors)
		}
		if float64(ts.sent)/ts.duration().Seconds() < rotateRate*0.8 {
			t.Errorf("%s: %.0f requests per second sent, want about %d", c, float64(ts.sent)/ts.duration().Seconds(), rotateRate)
		}
		ts.mu.Unlock()
		vs := views[c]
		vs.mu.Lock()
		t.Logf("%s's istiod clusterz (pod proxy), %s as seen in %d reads: %v", c, other[c], vs.reads, vs.seen)
		for st, n := range vs.seen {
			if st != "synced" && st != "syncing" {
				t.Errorf("%s's istiod: %s was %s in %d of %d reads of clusterz", c, other[c], st, n, vs.reads)
			}
		}
		if vs.reads < 20 || vs.seen["synced"] == 0 {
			t.Errorf("%s's istiod: clusterz read %d times, %v: want it polled all along", c, vs.reads, vs.seen)
		}
		vs.mu.Unlock()
	}

	// Every replaced token is dead: a real request with it is refused.
	for _, rt := range replaced {
		cfg := rest.AnonymousClientConfig(l.Cluster(rt.target).RESTConfig())
		cfg.BearerToken = rt.token
		cs := kubernetes.NewForConfigOrDie(cfg)
		_, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{Limit: 1})
		if !apierrors.IsUnauthorized(err) {
			t.Errorf("%s: a replaced reader token still reads services: %v", rt.target, err)
		}
	}
	if len(replaced) != 2*rotations {
		t.Errorf("%d replaced tokens checked, want %d", len(replaced), 2*rotations)
	}

	// The baseline, in the same run: a full re-apply of the same spec.
	counter.reset()
	start := time.Now()
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("re-apply: %v %v", err, rep.Err())
	}
	applyTime, applyWrites := time.Since(start), counter.total()
	rt, sw, rw := medianOf(rotationTimes), medianOf(switchTimes), medianInt(rotationWrites)
	t.Logf("bench: rotation (every reader, %d clusters), median of %d: %s, %d API writes; every istiod on the new token after %s",
		len(l.Clusters()), rotations, rt.Round(time.Millisecond), rw, sw.Round(time.Millisecond))
	t.Logf("bench: full re-apply of the same spec: %s, %d API writes", applyTime.Round(time.Millisecond), applyWrites)
	t.Logf("bench: ratio rotation/re-apply: time %.2f, writes %.2f; istiod switch/re-apply time %.2f",
		float64(rt)/float64(applyTime), float64(rw)/float64(max(applyWrites, 1)), float64(sw)/float64(applyTime))
}

type replacedToken struct{ target, token string }

// remoteSecretToken is the bearer token in reader's remote secret for target.
func remoteSecretToken(t *testing.T, ctx context.Context, reader *lab.Cluster, target string) string {
	t.Helper()
	s, err := reader.Client().CoreV1().Secrets("istio-system").Get(ctx, federation.RemoteSecretName(target), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: remote secret for %s: %v", reader.Name, target, err)
	}
	cfg, err := clientcmd.Load(s.Data[target])
	if err != nil || cfg.AuthInfos[target] == nil {
		t.Fatalf("%s: remote secret for %s: kubeconfig: %v", reader.Name, target, err)
	}
	return cfg.AuthInfos[target].Token
}

func syncedMillis(r *server.ReaderRotation) map[string]string {
	out := map[string]string{}
	for _, rr := range r.Readers {
		out[rr.Cluster] = fmt.Sprintf("%dms, old token refused %dms after revocation", rr.IstiodSyncedMillis, rr.RefusedMillis)
	}
	return out
}

// istiodSwitched finds istiod's log line saying it stopped the previous
// remote cluster id once the new one synced, the first one after since.
func istiodSwitched(logFile, id string, since time.Time) (time.Time, error) {
	deadline := time.Now().Add(time.Minute)
	want := "stopping previous cluster " + id + " after new cluster synced"
	for time.Now().Before(deadline) {
		f, err := os.Open(logFile)
		if err != nil {
			return time.Time{}, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.Contains(line, want) {
				continue
			}
			ts, _, _ := strings.Cut(line, "\t")
			at, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(ts))
			if err == nil && !at.Before(since) {
				f.Close()
				return at, nil
			}
		}
		f.Close()
		time.Sleep(200 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no %q line after %s in %s", want, since.Format(time.RFC3339Nano), logFile)
}

// trafficStats counts one client's requests.
type trafficStats struct {
	mu         sync.Mutex
	start, end time.Time
	sent       int
	failed     int
	versions   map[string]int
	errors     []string
}

func (ts *trafficStats) duration() time.Duration { return ts.end.Sub(ts.start) }

func (ts *trafficStats) count(v string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.versions[v]
}

// snapshot is the answers so far by cluster/version, of ts (east) and w (west).
func (ts *trafficStats) snapshot(w *trafficStats) map[string]int {
	out := map[string]int{}
	for name, s := range map[string]*trafficStats{"east": ts, "west": w} {
		s.mu.Lock()
		for v, n := range s.versions {
			out[name+"/"+v] = n
		}
		s.mu.Unlock()
	}
	return out
}

// run sends GET helloworld.sample:5000/hello through the pod's capture
// address (its sidecar) at rate per second until ctx ends; the requests in
// flight are then waited for.
func (ts *trafficStats) run(ctx context.Context, capture string, rate int) {
	proxy, _ := url.Parse("http://" + capture)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy), DisableKeepAlives: true}}
	var inflight sync.WaitGroup
	var n atomic.Int64
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	ts.mu.Lock()
	ts.start = time.Now()
	ts.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			inflight.Wait()
			ts.mu.Lock()
			ts.end = time.Now()
			ts.mu.Unlock()
			return
		case <-tick.C:
		}
		n.Add(1)
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			// Not ctx: a request sent is answered, however the test stops.
			req, _ := http.NewRequest(http.MethodGet, "http://helloworld.sample:5000/hello", nil)
			resp, err := client.Do(req)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
				}
			}
			ts.mu.Lock()
			defer ts.mu.Unlock()
			ts.sent++
			mm := helloLine.FindSubmatch(body)
			if err == nil && mm == nil {
				err = fmt.Errorf("unexpected answer %q", body)
			}
			if err != nil {
				ts.failed++
				if len(ts.errors) < 5 && !slices.Contains(ts.errors, err.Error()) {
					ts.errors = append(ts.errors, time.Now().UTC().Format("15:04:05.000")+" "+err.Error())
				}
				return
			}
			ts.versions[string(mm[1])]++
		}()
	}
}

// clusterzStats counts what one istiod's clusterz says of a cluster.
type clusterzStats struct {
	mu    sync.Mutex
	reads int
	seen  map[string]int // status ("missing" when not listed, "error: ..." when unread)
}

// poll reads istiod's /debug/clusterz through the API server's pod proxy
// (the monitoring port, as flotilla check and istioctl remote-clusters
// read it) every 100ms until ctx ends.
func (vs *clusterzStats) poll(ctx context.Context, kc *kube.Cluster, in lab.IstiodInfo, id string) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := kc.Kube.CoreV1().Pods(in.Namespace).ProxyGet("http", in.Pod, "15014", "/debug/clusterz", nil).DoRaw(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		st := "missing"
		var clusters []struct {
			ID         string `json:"id"`
			SyncStatus string `json:"syncStatus"`
		}
		if err == nil {
			err = json.Unmarshal(body, &clusters)
		}
		if err != nil {
			st = "error: " + err.Error()
		}
		for _, c := range clusters {
			if c.ID == id {
				st = c.SyncStatus
			}
		}
		vs.mu.Lock()
		vs.reads++
		vs.seen[st]++
		vs.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

// writeCounter counts the API requests other than reads.
type writeCounter struct{ n atomic.Int64 }

func (c *writeCounter) reset()     { c.n.Store(0) }
func (c *writeCounter) total() int { return int(c.n.Load()) }

type countingRT struct {
	rt http.RoundTripper
	c  *writeCounter
}

func (ct countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	// TokenReview and SubjectAccessReview are reads posted as creates.
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.Contains(r.URL.Path, "/tokenreviews") && !strings.Contains(r.URL.Path, "/subjectaccessreviews") {
		ct.c.n.Add(1)
	}
	return ct.rt.RoundTrip(r)
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianInt(ns []int) int {
	s := slices.Clone(ns)
	sort.Ints(s)
	return s[len(s)/2]
}
