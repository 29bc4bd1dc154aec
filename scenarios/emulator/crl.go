package emulator

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// A sidecar's certificate revocation lists, with real istiods, come from
// where a real mesh puts them: istiod reads ca-crl.pem from its plug-in
// cacerts and writes it into every namespace as the ConfigMap istio-ca-crl
// (key ca-crl.pem); the injection template mounts that ConfigMap (volume
// istio-ca-crl, optional) at /var/run/secrets/istio/crl; pilot-agent, when
// the file exists, gives Envoy the root validation context's crl
// (filename) and nothing else. Envoy then sets X509_V_FLAG_CRL_CHECK and,
// with only_verify_leaf_cert_crl false (Istio leaves it so),
// X509_V_FLAG_CRL_CHECK_ALL: every certificate of the verified chain, the
// root included, needs a current CRL from its issuer, else the handshake
// fails ("unable to get certificate CRL"), and one that a CRL lists is
// refused ("certificate revoked").

const (
	crlVolume    = "istio-ca-crl"
	crlConfigKey = "ca-crl.pem"
	// crlTTL is how long a read of the ConfigMap serves: the kubelet too
	// refreshes ConfigMap volumes on its own period, not on every change.
	crlTTL = 2 * time.Second
)

// crlCache holds one pod's CRLs as last read.
type crlCache struct {
	mu   sync.Mutex
	at   time.Time
	crls []*x509.RevocationList
	err  error
}

// crlConfigMap is the ConfigMap the pod's istio-ca-crl volume mounts, ""
// when the pod has no such volume (no CRL is ever configured then).
func crlConfigMap(p *corev1.Pod) string {
	for _, v := range p.Spec.Volumes {
		if v.Name == crlVolume && v.ConfigMap != nil {
			return v.ConfigMap.Name
		}
	}
	return ""
}

// podCRLs are the CRLs the pod's Envoy holds: nil when the mounted file
// does not exist (no volume, no ConfigMap, or no ca-crl.pem in it).
func podCRLs(ctx context.Context, kc kubernetes.Interface, p *corev1.Pod, cache *crlCache) ([]*x509.RevocationList, error) {
	name := crlConfigMap(p)
	if name == "" {
		return nil, nil
	}
	cache.mu.Lock()
	defer cache.mu.Unlock()
	if time.Since(cache.at) < crlTTL {
		return cache.crls, cache.err
	}
	cache.crls, cache.err = nil, nil
	cm, err := kc.CoreV1().ConfigMaps(p.Namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		cache.err = fmt.Errorf("configmap %s/%s: %w", p.Namespace, name, err)
	default:
		if data := cm.Data[crlConfigKey]; data != "" {
			cache.crls, cache.err = parseCRLs([]byte(data))
			if cache.err != nil {
				cache.err = fmt.Errorf("configmap %s/%s: %w", p.Namespace, name, cache.err)
			}
		}
	}
	cache.at = time.Now()
	return cache.crls, cache.err
}

func parseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", crlConfigKey, err)
		}
		out = append(out, crl)
	}
	return out, nil
}

// checkCRLs is Envoy's revocation check of a verified chain (leaf first,
// root last) with CRL_CHECK_ALL.
func checkCRLs(chain []*x509.Certificate, crls []*x509.RevocationList, now time.Time) error {
	for i, c := range chain {
		issuer := c // the root: its own CRL
		if i+1 < len(chain) {
			issuer = chain[i+1]
		}
		var crl *x509.RevocationList
		for _, r := range crls {
			if bytes.Equal(r.RawIssuer, issuer.RawSubject) && r.CheckSignatureFrom(issuer) == nil {
				crl = r
				break
			}
		}
		switch {
		case crl == nil:
			return fmt.Errorf("certificate %q (serial %x): unable to get certificate CRL", c.Subject, c.SerialNumber)
		case now.Before(crl.ThisUpdate):
			return fmt.Errorf("CRL of %q is not yet valid", issuer.Subject)
		case !crl.NextUpdate.IsZero() && !now.Before(crl.NextUpdate):
			return fmt.Errorf("CRL of %q has expired", issuer.Subject)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return fmt.Errorf("certificate %q (serial %x): certificate revoked", c.Subject, c.SerialNumber)
			}
		}
	}
	return nil
}

// withCRL adds the pod's CRLs to a peer verification (verifyPeer's): the
// chain that verification accepts must pass checkCRLs too.
func (a *agent) withCRL(verify func([][]byte, [][]*x509.Certificate) error, roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		if err := verify(raw, chains); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		crls, err := podCRLs(ctx, a.kube, a.pod, &a.crl)
		if err != nil {
			return err
		}
		if crls == nil {
			return nil
		}
		verified, err := verifyChain(raw, roots)
		if err != nil {
			return err
		}
		if err := checkCRLs(verified, crls, time.Now()); err != nil {
			return fmt.Errorf("peer certificate: %w", err)
		}
		return nil
	}
}
