package server

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/server/spec"
)

// The helloworld check of Istio's multi-cluster guides.
const (
	sampleNamespace = "sample"
	helloService    = "helloworld"
	helloPort       = 5000
	curlName        = "curl"
	curlImage       = "curlimages/curl"
	helloRequestURL = "helloworld.sample:5000/hello"
)

var helloAnswer = regexp.MustCompile(`Hello version: (\S+), instance: (\S+)`)

// VerifyOptions change how Verify runs.
type VerifyOptions struct {
	// Requests is how many requests each client sends (DefaultVerifyRequests
	// when zero).
	Requests int
	// Keep leaves the sample apps in place.
	Keep bool
	// Timeout bounds the wait for the sample pods to be Ready
	// (DefaultVerifyTimeout when zero).
	Timeout time.Duration
	// LocalService leaves the sample Service of ambient clusters without
	// istio.io/global: a negative control, under which each client should
	// reach only its own cluster's version.
	LocalService bool
}

// Defaults and bounds of VerifyOptions.
const (
	DefaultVerifyRequests = 10
	MaxVerifyRequests     = 1000
	DefaultVerifyTimeout  = 3 * time.Minute
)

// Validate says what is wrong with o, naming the flag a user sets.
func (o VerifyOptions) Validate() error {
	if o.Requests < 0 || o.Requests > MaxVerifyRequests {
		return fmt.Errorf("--requests %d: want 1 to %d", o.Requests, MaxVerifyRequests)
	}
	if o.Timeout < 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", o.Timeout)
	}
	return nil
}

func (o VerifyOptions) withDefaults() VerifyOptions {
	if o.Requests == 0 {
		o.Requests = DefaultVerifyRequests
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultVerifyTimeout
	}
	return o
}

// VerifyResult is verify's outcome; its JSON form is `verify -o json`.
type VerifyResult struct {
	// Versions are the helloworld versions deployed, one per workload cluster.
	Versions []string       `json:"versions"`
	Clients  []VerifyClient `json:"clients"`
	OK       bool           `json:"ok"`
	// Diagnosis lists the failing checks (as flotilla check) and pods
	// without a sidecar, when a version is missing.
	Diagnosis []Check `json:"diagnosis,omitempty"`
	// RequestMillis is the mean wall time of one request round trip
	// (exec, curl, answer), over every client.
	RequestMillis float64 `json:"requestMillis"`
}

// VerifyClient is what one cluster's curl pod got.
type VerifyClient struct {
	Cluster  string         `json:"cluster"`
	Pod      string         `json:"pod"`
	Requests int            `json:"requests"`
	Answers  map[string]int `json:"answers"`
	Failures int            `json:"failures"`
	// Errors are the first few distinct failures, in the order they came.
	Errors []string `json:"errors,omitempty"`
	// LastFailure is the last request's output or error that was not an answer.
	LastFailure string   `json:"lastFailure,omitempty"`
	Missing     []string `json:"missing,omitempty"`
}

// maxVerifyErrors is how many distinct failures a client reports.
const maxVerifyErrors = 3

// verifyCluster is one workload cluster of the check.
type verifyCluster struct {
	name    string
	kc      *kube.Cluster
	version string
	// ambient: the sample joins the mesh through ztunnel (namespace label
	// istio.io/dataplane-mode=ambient) and its Service is global unless
	// local (VerifyOptions.LocalService).
	ambient, local bool
}

// Verify runs Istio's helloworld check across the workload clusters of m
// (nil: the stored spec): it deploys the sample, waits for its pods to be
// Ready, sends o.Requests requests from each cluster's curl client and
// counts the answers by version. An error means the check could not run;
// a check that ran returns its result, whose Err is the verdict.
func (h *Hub) Verify(ctx context.Context, m *spec.Mesh, o VerifyOptions) (*VerifyResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	p, err := h.planOf(ctx, m)
	if err != nil {
		return nil, err
	}
	conns, errs := h.connect(p.Clusters, false)
	var clusters []*verifyCluster
	for _, mem := range p.Layout.Clusters {
		if mem.Role == deploy.RoleControlPlane {
			continue // runs istiod for others, no workloads
		}
		if err := errs[mem.Name]; err != nil {
			return nil, err // names the cluster
		}
		clusters = append(clusters, &verifyCluster{name: mem.Name, kc: conns[mem.Name], version: fmt.Sprintf("v%d", len(clusters)+1), ambient: mem.Ambient(), local: o.LocalService})
	}
	if len(clusters) == 0 {
		return nil, fmt.Errorf("mesh %s has no cluster that runs workloads", p.Name)
	}
	if !o.Keep {
		defer func() {
			// Removal outlives a cancelled request: leftovers would break the next run.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			h.removeSample(cctx, clusters)
		}()
	}
	if err := h.deploySample(ctx, clusters); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	err = h.waitRollouts(wctx, clusters)
	cancel()
	if err != nil {
		return nil, err
	}
	res := &VerifyResult{}
	for _, c := range clusters {
		res.Versions = append(res.Versions, c.version)
	}
	res.Clients, res.RequestMillis = h.runRequests(ctx, clusters, o.Requests)
	res.OK = judge(res) == nil
	if !res.OK {
		res.Diagnosis = h.diagnoseVerify(ctx, p, clusters)
	}
	return res, nil
}

// Err is the verdict: nil only when every request of every client got an
// answer and every version answered every client.
func (r *VerifyResult) Err() error { return judge(r) }

// judge fills in each client's missing versions and returns nil only when
// every request of every client got an answer and every version answered
// every client: a mesh that drops some requests is not a working mesh.
func judge(res *VerifyResult) error {
	var failed, total int
	var perClient, miss, first []string
	for i := range res.Clients {
		cl := &res.Clients[i]
		cl.Missing = nil
		for _, v := range res.Versions {
			if cl.Answers[v] == 0 {
				cl.Missing = append(cl.Missing, v)
			}
		}
		failed += cl.Failures
		total += cl.Requests
		perClient = append(perClient, fmt.Sprintf("%s %d/%d", cl.Cluster, cl.Failures, cl.Requests))
		if len(cl.Missing) > 0 {
			miss = append(miss, fmt.Sprintf("%s misses %s", cl.Cluster, strings.Join(cl.Missing, ",")))
		}
		for _, e := range cl.Errors {
			first = append(first, cl.Cluster+": "+e)
		}
	}
	var parts []string
	if failed > 0 {
		msg := fmt.Sprintf("%d of %d requests failed (%s)", failed, total, strings.Join(perClient, ", "))
		if len(first) > 0 {
			if len(first) > maxVerifyErrors {
				first = first[:maxVerifyErrors]
			}
			msg += "; first errors: " + strings.Join(first, "; ")
		}
		parts = append(parts, msg)
	}
	if len(miss) > 0 {
		parts = append(parts, "cross-cluster traffic incomplete: "+strings.Join(miss, "; "))
	}
	if len(parts) == 0 {
		return nil
	}
	return errors.New("verify: " + strings.Join(parts, "; "))
}
