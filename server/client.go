package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/flotillamesh/flotilla/server/spec"
	"github.com/flotillamesh/flotilla/server/state"
)

// ClientOptions say how to reach a running hub.
type ClientOptions struct {
	// URL is the hub's base URL, https://host:port.
	URL string
	// Token is the hub's bearer token.
	Token string
	// CAFile is the CA the hub's serving certificate chains to (the file
	// flotilla server --tls-ca-out wrote); it is then the only CA trusted.
	// Empty: the system roots.
	CAFile string
	// Transport replaces the HTTP transport (tests); CAFile is then ignored.
	Transport http.RoundTripper
}

// Client drives a running hub over its API; it is an Engine like the Hub.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

var _ Engine = (*Client)(nil)

// NewClient checks o and builds a client; it does not contact the hub.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(o.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("hub URL %q: %w", o.URL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("hub URL %q: want https://host:port (the token is never sent in the clear)", o.URL)
	}
	if o.Token == "" {
		return nil, fmt.Errorf("hub %s: no token: give a token file or set %s", u.Host, TokenEnv)
	}
	rt := o.Transport
	if rt == nil {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CAFile != "" {
			pemData, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("hub CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pemData) {
				return nil, fmt.Errorf("hub CA %s: no PEM certificate in it", o.CAFile)
			}
			cfg.RootCAs = pool
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = cfg
		rt = tr
	}
	return &Client{base: u, token: o.Token, http: &http.Client{Transport: rt}}, nil
}

// APIError is an error answer of the hub.
type APIError struct {
	StatusCode int
	// Message is the hub's error message.
	Message string
	// Problems are the problems of a rejected spec, one by one.
	Problems []spec.Problem
}

func (e *APIError) Error() string { return "hub: " + e.Message }

// Unwrap gives a rejected spec's problems as a *spec.Error.
func (e *APIError) Unwrap() error {
	if len(e.Problems) == 0 {
		return nil
	}
	return &spec.Error{Source: "hub", Problems: e.Problems}
}

// Apply asks the hub to apply m (nil: the stored spec, i.e. reconcile now).
func (c *Client) Apply(ctx context.Context, m *spec.Mesh, o ApplyOptions) (*ApplyReport, error) {
	q := url.Values{}
	if o.DryRun {
		q.Set("dryRun", "true")
	}
	if o.CACertsPolicy != 0 {
		q.Set("cacertsPolicy", o.CACertsPolicy.String())
	}
	var rep ApplyReport
	if err := c.do(ctx, http.MethodPost, "/api/v1/apply", q, m, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Status asks the hub for the status of m (nil: the stored spec).
func (c *Client) Status(ctx context.Context, m *spec.Mesh) (*Status, error) {
	var st Status
	if err := c.do(ctx, methodFor(m), "/api/v1/status", nil, m, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Check asks the hub to diagnose m (nil: the stored spec).
func (c *Client) Check(ctx context.Context, m *spec.Mesh) ([]Check, error) {
	var checks []Check
	if err := c.do(ctx, methodFor(m), "/api/v1/check", nil, m, &checks); err != nil {
		return nil, err
	}
	return checks, nil
}

// Verify asks the hub to run the helloworld check on m (nil: the stored
// spec); the hub deploys the sample and sends the requests.
func (c *Client) Verify(ctx context.Context, m *spec.Mesh, o VerifyOptions) (*VerifyResult, error) {
	q := url.Values{}
	if o.Requests != 0 {
		q.Set("requests", strconv.Itoa(o.Requests))
	}
	if o.Keep {
		q.Set("keep", "true")
	}
	if o.Timeout != 0 {
		q.Set("timeout", o.Timeout.String())
	}
	if o.LocalService {
		q.Set("localService", "true")
	}
	var res VerifyResult
	if err := c.do(ctx, http.MethodPost, "/api/v1/verify", q, m, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Journal returns up to limit applies from the hub's journal, newest first
// (0: all).
func (c *Client) Journal(ctx context.Context, limit int) ([]state.ApplyRecord, error) {
	var out []state.ApplyRecord
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if err := c.do(ctx, http.MethodGet, "/api/v1/journal", q, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Members lists the hub's replicas, their health and the clusters each
// reconciles.
func (c *Client) Members(ctx context.Context) (*Members, error) {
	var out Members
	if err := c.do(ctx, http.MethodGet, "/api/v1/members", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func methodFor(m *spec.Mesh) string {
	if m == nil {
		return http.MethodGet
	}
	return http.MethodPost
}

// do sends m (if any) as the body. The spec travels in its canonical form
// (JSON, which is YAML): the hub parses and validates it again. File paths
// in it (kubeconfig, root files) are read on the hub's machine.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, m *spec.Mesh, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = q.Encode()
	var body io.Reader
	if m != nil {
		body = bytes.NewReader(m.Canonical())
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("hub %s: %w", c.base.Host, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if m != nil {
		req.Header.Set("Content-Type", "application/yaml")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("hub %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("hub %s: %s %s: read answer: %w", c.base.Host, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return apiError(resp, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("hub %s: %s %s: decode answer: %w", c.base.Host, method, path, err)
	}
	return nil
}

func apiError(resp *http.Response, data []byte) error {
	e := &APIError{StatusCode: resp.StatusCode}
	var body errorBody
	if err := json.Unmarshal(data, &body); err == nil && body.Error != "" {
		e.Message, e.Problems = body.Error, body.Problems
		return e
	}
	// Not one of the hub's answers (a proxy, a wrong URL): say what came back.
	text := strings.TrimSpace(string(data))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	e.Message = resp.Status
	if text != "" {
		e.Message += ": " + text
	}
	return e
}
