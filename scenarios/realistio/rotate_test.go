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

// maxInFlight bounds each client's requests in flight (connections).
const maxInFlight = 64

var helloLine = regexp.MustCompile(`Hello version: (v\d+), instance: `)

// TestRotateUnderTraffic forces three rotations of every reader credential
// (flotilla federation rotate) while each cluster's curl client sends
// helloworld requests at 100 per second through its sidecar, whose
// endpoints come from the real istiods: no request may fail, and both
// versions keep answering each client (the remote version is reachable only
// while istiod reads the other cluster). istiod's /debug/clusterz, read
// through the API server's pod proxy as flotilla reads it, is polled all
// along: the other cluster must never be missing, timed out or closed
// (istiod lists the replacement built from the new secret as syncing for a
// moment while the previous one keeps serving: make-before-break; the test
// measures that span and requires synced at the end).
// istiod's own log must say, after each rotation, that it replaced the
// remote cluster once the one built from the new secret synced; every
// replaced token is refused afterwards (401 on a real request).
//
// It also measures, as benchmark figures in the log (the request rate
// reached is one: the data plane is an emulator sharing the machine): the
// time from the forced rotation to the last reading istiod switching to the
// new token (its "stopping previous cluster ... after new cluster synced"
// line), and the API writes of a rotation, against full re-applies of the
// same spec in the same run, without traffic.
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

	// Stop the traffic and the polls before the emulator stops (cleanups
	// run last first), also when the test ends early.
	t.Cleanup(func() { stopTraffic(); twg.Wait(); vwg.Wait() })

	// A window of traffic without rotation: what the lab sustains at all.
	time.Sleep(5 * time.Second)
	baseline := map[string]int{}
	for c, ts := range traffic {
		ts.mu.Lock()
		baseline[c] = ts.failed
		t.Logf("%s's client before any rotation: %d requests, %d failed %v", c, ts.sent, ts.failed, ts.errors)
		ts.mu.Unlock()
	}
	var switchTimes, rotationTimes []time.Duration
	var rotationWrites []int
	var rotationKinds string
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
		rotationKinds = counter.String()
		for _, rr := range r.Readers {
			// The package's tests share the lab, each with a hub of its own:
			// the reader may hold other hubs' tokens, which rotation revokes
			// too. At least the one this hub held must go.
			if !rr.OldTokenRefused || len(rr.Revoked) == 0 {
				t.Errorf("rotation %d: %s: %+v, want the old token revoked and refused", i+1, rr.Cluster, rr)
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
			t.Errorf("%s: %d of %d requests failed (%d of them in the window before any rotation): %v", c, ts.failed, ts.sent, baseline[c], ts.errors)
		}
		// The rate is a figure, not an assertion: the lab's data plane is
		// an emulator sharing the machine; what it sustains is reported.
		ts.mu.Unlock()
		vs := views[c]
		vs.mu.Lock()
		t.Logf("%s's istiod clusterz (pod proxy), %s as seen in %d reads: %v, longest time not synced %s (istiod lists the replacement as syncing while the previous one serves); %d reads unanswered (%s)",
			c, other[c], vs.reads, vs.seen, vs.longest.Round(time.Millisecond), vs.failed, vs.lastErr)
		if !vs.since.IsZero() {
			t.Errorf("%s's istiod: %s not synced at the end (since %s)", c, other[c], vs.since.Format(time.RFC3339Nano))
		}
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

	// Benchmark, without traffic, all in the same conditions: one more
	// forced rotation; a full re-apply of the same spec (nothing to do); and
	// a full re-apply that re-issues every reader token (the spec's tokenTTL
	// shortened by an hour: each token outlives it), the way to replace
	// tokens without the rotate command.
	switched := func(start time.Time) time.Duration {
		var last time.Duration
		for _, reader := range []string{"east", "west"} {
			at, err := istiodSwitched(istiods[reader].Log, other[reader], start)
			if err != nil {
				t.Errorf("istiod in %s: %v", reader, err)
				continue
			}
			last = max(last, at.Sub(start))
		}
		return last
	}
	counter.reset()
	start := time.Now()
	if _, err := h.RotateReaders(ctx, nil, server.ReaderRotationOptions{}); err != nil {
		t.Fatalf("benchmark rotation: %v", err)
	}
	quietTime, quietWrites, quietSwitch := time.Since(start), counter.total(), switched(start)
	counter.reset()
	start = time.Now()
	rep, err := h.Apply(ctx, m, server.ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("re-apply: %v %v", err, rep.Err())
	}
	noopTime, noopWrites := time.Since(start), counter.total()
	shorter := *m
	shorter.Spec.Federation.TokenTTL.Duration = m.Spec.Federation.TokenTTL.Duration - time.Hour
	counter.reset()
	start = time.Now()
	rep, err = h.Apply(ctx, &shorter, server.ApplyOptions{})
	if err != nil || rep.Err() != nil {
		t.Fatalf("renewing re-apply: %v %v", err, rep.Err())
	}
	renewTime, renewWrites, renewKinds := time.Since(start), counter.total(), counter.String()
	renewSwitch := switched(start)
	rt, sw, rw := medianOf(rotationTimes), medianOf(switchTimes), medianInt(rotationWrites)
	t.Logf("bench: under traffic, rotation of every reader (%d clusters), median of %d: %s in all (incl. the settle, the wait for istiod and for the old tokens' refusal), %d API writes (%s); every istiod on the new token %s after it began",
		len(l.Clusters()), rotations, rt.Round(time.Millisecond), rw, rotationKinds, sw.Round(time.Millisecond))
	t.Logf("bench: no traffic, rotation of every reader: %s in all, %d API writes; every istiod on the new token %s after it began",
		quietTime.Round(time.Millisecond), quietWrites, quietSwitch.Round(time.Millisecond))
	t.Logf("bench: no traffic, full re-apply, nothing to do: %s, %d API writes", noopTime.Round(time.Millisecond), noopWrites)
	t.Logf("bench: no traffic, full re-apply re-issuing every token: %s, %d API writes (%s; the old tokens stay valid until a later apply revokes them, after the grace); every istiod on the new token %s after it began",
		renewTime.Round(time.Millisecond), renewWrites, renewKinds, renewSwitch.Round(time.Millisecond))
	t.Logf("bench: ratio rotation/renewing re-apply (no traffic): time to every istiod on the new token %.2f, API writes %.2f (the rotation's extra writes are the 2 revocations)",
		float64(quietSwitch)/float64(max(renewSwitch, 1)), float64(quietWrites)/float64(max(renewWrites, 1)))
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
	slots := make(chan struct{}, maxInFlight)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	ts.mu.Lock()
	ts.start = start
	ts.mu.Unlock()
	// Requests due by the clock, not by ticks: a tick missed on a busy
	// machine is made up at the next.
	issued := 0
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
		due := int(time.Since(start).Seconds() * float64(rate))
	issue:
		for ; issued < due; issued++ {
			select {
			case slots <- struct{}{}:
			default:
				break issue // as many in flight as a client keeps: the rest waits
			}
			inflight.Add(1)
			go func() {
				defer func() { <-slots }()
				ts.request(client, &inflight)
			}()
		}
	}
}

// request sends one GET /hello and counts its outcome.
func (ts *trafficStats) request(client *http.Client, inflight *sync.WaitGroup) {
	defer inflight.Done()
	// Not the test's context: a request sent is answered, however the test stops.
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
		if len(ts.errors) < 5 {
			ts.errors = append(ts.errors, time.Now().UTC().Format("15:04:05.000")+" "+err.Error())
		}
		return
	}
	ts.versions[string(mm[1])]++
}

// clusterzStats counts what one istiod's clusterz says of a cluster.
type clusterzStats struct {
	mu    sync.Mutex
	reads int
	seen  map[string]int // status ("missing" when not listed)
	// failed counts the reads that got no answer, lastErr the last error.
	failed  int
	lastErr string
	// since is when the current run of reads other than synced began;
	// longest is the longest such run that ended.
	since   time.Time
	longest time.Duration
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
		for _, c := range clusters {
			if c.ID == id {
				st = c.SyncStatus
			}
		}
		vs.mu.Lock()
		if err != nil {
			// The read failed (a busy API server): istiod said nothing.
			vs.failed++
			vs.lastErr = err.Error()
		} else {
			vs.reads++
			vs.seen[st]++
			switch {
			case st != "synced" && vs.since.IsZero():
				vs.since = time.Now()
			case st == "synced" && !vs.since.IsZero():
				vs.longest = max(vs.longest, time.Since(vs.since))
				vs.since = time.Time{}
			}
		}
		vs.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

// writeCounter counts the API requests other than reads, by verb and resource.
type writeCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *writeCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = map[string]int{}
}

func (c *writeCounter) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k]++
}

func (c *writeCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *writeCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k, v := range c.n {
		out = append(out, fmt.Sprintf("%d %s", v, k))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// resourceOf names the resource (and subresource) of an API path.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			r := parts[i+2]
			if i+4 < len(parts) {
				r += "/" + parts[i+4]
			}
			return r
		}
	}
	return parts[len(parts)-1]
}

type countingRT struct {
	rt http.RoundTripper
	c  *writeCounter
}

func (ct countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	// TokenReview and SubjectAccessReview are reads posted as creates.
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.Contains(r.URL.Path, "/tokenreviews") && !strings.Contains(r.URL.Path, "/subjectaccessreviews") {
		ct.c.add(r.Method + " " + resourceOf(r.URL.Path))
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
