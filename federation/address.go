package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
)

// DefaultProbeTimeout bounds the reachability probe of an API server.
const DefaultProbeTimeout = 5 * time.Second

// ResolveEndpoint decides the address written into the secrets that read a
// cluster: override (the spec's apiServer) wins over the REST config's host,
// which is only what the operator's machine reaches. Loopback addresses are
// refused unless allowLoopback: istiod in another cluster cannot reach them.
func ResolveEndpoint(cluster, override string, cfg *rest.Config, allowLoopback bool) (Endpoint, error) {
	raw := override
	if raw == "" {
		if cfg == nil || cfg.Host == "" {
			return Endpoint{}, fmt.Errorf("%s: no API server address (set apiServer)", cluster)
		}
		raw = cfg.Host
	}
	server, err := normalizeServer(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%s: API server address %q: %w", cluster, raw, err)
	}
	if !allowLoopback && IsLoopback(server) {
		return Endpoint{}, fmt.Errorf("%s: API server address %s is loopback, which other clusters cannot reach: set apiServer to an address they can (or allow loopback for a local lab)", cluster, server)
	}
	ep := Endpoint{Server: server}
	if cfg != nil {
		ep.TLSServerName = cfg.TLSClientConfig.ServerName
		if ep.CAData, err = caData(cluster, cfg); err != nil {
			return Endpoint{}, err
		}
	}
	return ep, nil
}

// caData is the CA bundle cfg trusts for its API server, inline or read
// from its CA file.
func caData(cluster string, cfg *rest.Config) ([]byte, error) {
	if len(cfg.TLSClientConfig.CAData) > 0 || cfg.TLSClientConfig.CAFile == "" {
		return cfg.TLSClientConfig.CAData, nil
	}
	ca, err := os.ReadFile(cfg.TLSClientConfig.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%s: read CA file: %w", cluster, err)
	}
	return ca, nil
}

// normalizeServer makes raw an https URL without a trailing slash.
func normalizeServer(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q: istiod reads remote clusters over https only", u.Scheme)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("no host")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u.String(), nil
}

// IsLoopback reports whether server (a URL or host[:port]) names a loopback
// host: 127.0.0.0/8, ::1, localhost or a name under .localhost.
func IsLoopback(server string) bool {
	host := server
	if u, err := url.Parse(server); err == nil && u.Host != "" {
		host = u.Hostname()
	} else if h, _, err := net.SplitHostPort(server); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Probe checks that the API server at ep answers GET /version over TLS
// verified with ep's CA. Any HTTP answer counts (an anonymous 401/403 still
// proves the address and CA right). It probes from this machine, the best
// stand-in available for the reading cluster's network.
func Probe(ctx context.Context, cluster string, ep Endpoint, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	tc := &tls.Config{ServerName: ep.TLSServerName, MinVersion: tls.VersionTLS12}
	if len(ep.CAData) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ep.CAData) {
			return fmt.Errorf("%s: API server %s: CA data holds no PEM certificate", cluster, ep.Server)
		}
		tc.RootCAs = pool
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.Server+"/version", nil)
	if err != nil {
		return fmt.Errorf("%s: API server %s: %w", cluster, ep.Server, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: API server %s does not answer: %w", cluster, ep.Server, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return nil
}
