package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"time"

	"github.com/flotillamesh/flotilla/server/state"
)

// servingCASecret keeps the generated serving CA sealed in the state, so
// that clients pinning it keep working across restarts.
const servingCASecret = "server/serving-ca"

const (
	servingCALifetime   = 5 * 365 * 24 * time.Hour
	servingCertLifetime = 365 * 24 * time.Hour
)

// servingCA is the CA of generated serving certificates.
type servingCA struct {
	CertPEM []byte `json:"certPEM"`
	KeyPEM  []byte `json:"keyPEM"`
}

func (s *Server) serverTLS(ctx context.Context, addr net.Addr) (*tls.Config, []byte, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if s.opts.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.TLSCertFile, s.opts.TLSKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("server: TLS certificate %s: %w", s.opts.TLSCertFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		return cfg, nil, nil
	}
	ca, persisted, err := s.loadServingCA(ctx)
	if err != nil {
		return nil, nil, err
	}
	sans := servingSANs(s.opts.Listen, addr, s.opts.SANs)
	cert, err := issueServingCert(ca, sans, s.hub.now())
	if err != nil {
		return nil, nil, err
	}
	s.log.Info("generated the serving certificate", "sans", sans, "caPersisted", persisted)
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, ca.CertPEM, nil
}

// loadServingCA returns the CA kept in the state, making and storing one the
// first time. Without a state key it makes one for this run only.
func (s *Server) loadServingCA(ctx context.Context) (*servingCA, bool, error) {
	if s.hub.Store.HasKey() {
		var ca *servingCA
		err := s.hub.Store.View(ctx, func(tx *state.Tx) error {
			data, ok, err := tx.Secret(servingCASecret)
			if err != nil || !ok {
				return err
			}
			ca = &servingCA{}
			return json.Unmarshal(data, ca)
		})
		if err != nil {
			return nil, false, fmt.Errorf("server: stored serving CA: %w", err)
		}
		if ca != nil {
			if c, err := parseCertPEM(ca.CertPEM); err == nil && c.NotAfter.Sub(s.hub.now()) > servingCertLifetime {
				return ca, true, nil
			}
		}
	}
	ca, err := newServingCA(s.hub.now())
	if err != nil {
		return nil, false, err
	}
	if !s.hub.Store.HasKey() {
		s.log.Warn("the state has no key: the serving CA is new at every start and clients must pin it again")
		return ca, false, nil
	}
	data, err := json.Marshal(ca)
	if err != nil {
		return nil, false, err
	}
	// Replicas sharing a state may start together: the first CA stored
	// wins, in the same transaction that would store ours.
	err = s.hub.Store.Update(ctx, func(tx *state.Tx) error {
		if cur, ok, err := tx.Secret(servingCASecret); err != nil || ok {
			var stored servingCA
			if err == nil && json.Unmarshal(cur, &stored) == nil {
				if c, perr := parseCertPEM(stored.CertPEM); perr == nil && c.NotAfter.Sub(s.hub.now()) > servingCertLifetime {
					ca = &stored
					return nil
				}
			}
			if err != nil {
				return err
			}
		}
		return tx.PutSecret(servingCASecret, data)
	})
	if err != nil {
		return nil, false, fmt.Errorf("server: store serving CA: %w", err)
	}
	return ca, true, nil
}

func newServingCA(now time.Time) (*servingCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"flotilla"}, CommonName: "flotilla hub CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(servingCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("server: serving CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &servingCA{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// issueServingCert makes a serving certificate for sans under ca; its key
// lives only in memory.
func issueServingCert(ca *servingCA, sans []string, now time.Time) (tls.Certificate, error) {
	caCert, err := parseCertPEM(ca.CertPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server: serving CA: %w", err)
	}
	blk, _ := pem.Decode(ca.KeyPEM)
	if blk == nil {
		return tls.Certificate{}, errors.New("server: serving CA key is not PEM")
	}
	caKey, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return tls.Certificate{}, errors.New("server: serving CA key cannot be parsed")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{Organization: []string{"flotilla"}, CommonName: "flotilla hub"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(servingCertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range sans {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey.(crypto.Signer))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server: serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, caCert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// servingSANs are the names a client may dial: the listen host, every
// interface address when listening on all of them, loopback, the host name
// and the extra names.
func servingSANs(listen string, addr net.Addr, extra []string) []string {
	var sans []string
	add := func(n string) {
		if n != "" && !slices.Contains(sans, n) {
			sans = append(sans, n)
		}
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					add(n.IP.String())
				}
			}
		}
		if h, err := os.Hostname(); err == nil {
			add(h)
		}
	} else {
		add(host)
	}
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		add(ta.IP.String())
	}
	add("localhost")
	add("127.0.0.1")
	add("::1")
	for _, n := range extra {
		add(n)
	}
	return sans
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("server: crypto/rand: " + err.Error()) // never fails on supported platforms
	}
	return n
}

func newTLSListener(ln net.Listener, cfg *tls.Config) net.Listener { return tls.NewListener(ln, cfg) }
