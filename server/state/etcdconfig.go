package state

// The etcd state's URL: --state etcd://host:2379,.../?prefix=...&cacert=...

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
)

// IsEtcd reports whether a --state value names an etcd cluster.
func IsEtcd(state string) bool { return strings.HasPrefix(state, EtcdScheme) }

// EtcdConfig is a parsed etcd state URL.
type EtcdConfig struct {
	Endpoints []string
	Prefix    string
	// CACert, Cert and Key are PEM files: the CA that signed the members'
	// serving certificates, and this client's certificate and key.
	CACert, Cert, Key string
}

// ParseEtcdURL parses etcd://host:port,host:port/?prefix=P&cacert=F&cert=F&key=F.
// With cacert (or a client certificate) the endpoints are reached over TLS.
func ParseEtcdURL(raw string) (EtcdConfig, error) {
	if !IsEtcd(raw) {
		return EtcdConfig{}, fmt.Errorf("state %q: not an %s URL", raw, EtcdScheme)
	}
	rest := strings.TrimPrefix(raw, EtcdScheme)
	hosts, query, _ := strings.Cut(rest, "?")
	hosts = strings.TrimSuffix(hosts, "/")
	q, err := url.ParseQuery(query)
	if err != nil {
		return EtcdConfig{}, fmt.Errorf("state %s: query: %w", raw, err)
	}
	c := EtcdConfig{Prefix: q.Get("prefix"), CACert: q.Get("cacert"), Cert: q.Get("cert"), Key: q.Get("key")}
	for k := range q {
		if !slices.Contains([]string{"prefix", "cacert", "cert", "key"}, k) {
			return EtcdConfig{}, fmt.Errorf("state %s: unknown parameter %q (known: prefix, cacert, cert, key)", raw, k)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return EtcdConfig{}, fmt.Errorf("state %s: cert and key go together", raw)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultEtcdPrefix
	}
	c.Prefix = "/" + strings.Trim(c.Prefix, "/")
	scheme := "http://"
	if c.CACert != "" || c.Cert != "" {
		scheme = "https://"
	}
	for h := range strings.SplitSeq(hosts, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if strings.Contains(h, "/") {
			return EtcdConfig{}, fmt.Errorf("state %s: endpoint %q: want host:port", raw, h)
		}
		c.Endpoints = append(c.Endpoints, scheme+h)
	}
	if len(c.Endpoints) == 0 {
		return EtcdConfig{}, fmt.Errorf("state %s: no endpoint (etcd://host:2379,...)", raw)
	}
	return c, nil
}

// String names the cluster and prefix, for messages (no file names of keys).
func (c EtcdConfig) String() string {
	return EtcdScheme + strings.Join(c.Endpoints, ",") + "?prefix=" + c.Prefix
}

func (c EtcdConfig) tls() (*tls.Config, error) {
	if c.CACert == "" && c.Cert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CACert != "" {
		pemData, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate", c.CACert)
		}
		tc.RootCAs = pool
	}
	if c.Cert != "" {
		// LoadX509KeyPair's errors name the files, never the key's bytes.
		pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}
