package federation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"hash"
	"math/big"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/rest"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// legacyIssuer is the issuer of kubernetes.io/service-account-token secrets.
const legacyIssuer = "kubernetes/serviceaccount"

// signedByCluster reports whether token is a service-account token that
// cluster c signed and that is valid now by its signature, issuer, audience
// and time, checked against what the API server publishes for OIDC
// discovery (/.well-known/openid-configuration and its keys at
// /openid/v1/jwks). Those are reads, where TokenReview is a create call:
// a no-op reconcile then writes nothing.
//
// false means "could not tell", never "rejected": the discovery endpoints
// may be forbidden, the cluster may accept more issuers or audiences than it
// publishes, or use an algorithm not handled here. The caller asks
// TokenReview then. Whether the account still exists is the caller's check
// (issuedByCurrent); the signature cannot say.
func signedByCluster(ctx context.Context, c *kube.Cluster, token string, legacy bool, now time.Time) bool {
	rc := c.Kube.CoreV1().RESTClient()
	if r, ok := rc.(*rest.RESTClient); rc == nil || (ok && r == nil) {
		return false // fake clientsets have none
	}
	raw, err := rc.Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return false
	}
	var disco struct {
		Issuer string `json:"issuer"`
	}
	if json.Unmarshal(raw, &disco) != nil || disco.Issuer == "" {
		return false
	}
	raw, err = rc.Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return false
	}
	var set jwks
	if json.Unmarshal(raw, &set) != nil {
		return false
	}
	claims, ok := set.verify(token)
	if !ok {
		return false
	}
	if legacy {
		return claims.Issuer == legacyIssuer
	}
	// Without --api-audiences the API server's audience is its issuer;
	// anything else is not published and left to TokenReview.
	t := now.Unix()
	return claims.Issuer == disco.Issuer && slices.Contains(claims.Audience, disco.Issuer) &&
		claims.Expiry > t && claims.NotBefore <= t
}

type jwks struct {
	Keys []jwk `json:"keys"`
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

type jwtClaims struct {
	Issuer    string   `json:"iss"`
	Audience  audience `json:"aud"`
	Expiry    int64    `json:"exp"`
	NotBefore int64    `json:"nbf"`
}

// audience is a JWT aud claim: one string or a list of them.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// verify checks token's signature against the key set and returns its
// claims when one of the keys signed it.
func (s jwks) verify(token string) (jwtClaims, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return jwtClaims{}, false
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	h, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(h, &header) != nil {
		return jwtClaims{}, false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return jwtClaims{}, false
	}
	signed := []byte(parts[0] + "." + parts[1])
	verified := false
	for _, k := range s.Keys {
		if header.Kid != "" && k.Kid != header.Kid {
			continue
		}
		if k.verify(header.Alg, signed, sig) {
			verified = true
			break
		}
	}
	if !verified {
		return jwtClaims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	var claims jwtClaims
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		return jwtClaims{}, false
	}
	return claims, true
}

// verify checks sig over signed with k, for the algorithms Kubernetes signs
// service-account tokens with (RS256, ES256/384/512).
func (k jwk) verify(alg string, signed, sig []byte) bool {
	b := func(s string) *big.Int {
		d, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(d) == 0 {
			return nil
		}
		return new(big.Int).SetBytes(d)
	}
	digest := func(h hash.Hash) []byte { h.Write(signed); return h.Sum(nil) }
	switch {
	case alg == "RS256" && k.Kty == "RSA":
		n, e := b(k.N), b(k.E)
		if n == nil || e == nil || !e.IsInt64() {
			return false
		}
		pub := &rsa.PublicKey{N: n, E: int(e.Int64())}
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest(sha256.New()), sig) == nil
	case k.Kty == "EC":
		var curve elliptic.Curve
		var h hash.Hash
		switch {
		case alg == "ES256" && k.Crv == "P-256":
			curve, h = elliptic.P256(), sha256.New()
		case alg == "ES384" && k.Crv == "P-384":
			curve, h = elliptic.P384(), sha512.New384()
		case alg == "ES512" && k.Crv == "P-521":
			curve, h = elliptic.P521(), sha512.New()
		default:
			return false
		}
		x, y := b(k.X), b(k.Y)
		size := (curve.Params().BitSize + 7) / 8
		if x == nil || y == nil || len(sig) != 2*size || len(x.Bytes()) > size || len(y.Bytes()) > size {
			return false
		}
		point := make([]byte, 1+2*size)
		point[0] = 4 // uncompressed
		x.FillBytes(point[1 : 1+size])
		y.FillBytes(point[1+size:])
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(pub, digest(h), r, s)
	}
	return false
}
