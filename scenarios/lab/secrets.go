package lab

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KeyHolder names a Secret key that holds a private key matching a
// public key.
type KeyHolder struct {
	Cluster, Namespace, Secret, Key string
}

func (k KeyHolder) String() string {
	return fmt.Sprintf("%s: secret %s/%s key %s", k.Cluster, k.Namespace, k.Secret, k.Key)
}

// SecretsHolding walks every Secret of every cluster of the lab and
// returns each data key that holds the private key of pub, in any PEM
// block of any private-key type. It also returns how many private keys
// it looked at, so that a test can tell "none found" from "none seen".
func (l *Lab) SecretsHolding(ctx context.Context, pub crypto.PublicKey) (holders []KeyHolder, keysSeen int, err error) {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	want, ok := pub.(equaler)
	if !ok {
		return nil, 0, fmt.Errorf("public key %T cannot be compared", pub)
	}
	for _, c := range l.Clusters() {
		list, err := c.Client().CoreV1().Secrets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, 0, fmt.Errorf("%s: list secrets: %w", c.Name, err)
		}
		for _, s := range list.Items {
			for k, v := range s.Data {
				for rest := v; ; {
					var b *pem.Block
					b, rest = pem.Decode(rest)
					if b == nil {
						break
					}
					priv := parsePrivateKey(b)
					if priv == nil {
						continue
					}
					keysSeen++
					if want.Equal(priv.Public()) {
						holders = append(holders, KeyHolder{Cluster: c.Name, Namespace: s.Namespace, Secret: s.Name, Key: k})
					}
				}
			}
		}
	}
	return holders, keysSeen, nil
}

func parsePrivateKey(b *pem.Block) crypto.Signer {
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s
		}
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k
	}
	return nil
}
