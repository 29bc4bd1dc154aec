package federation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

type testKey struct {
	kid  string
	alg  string
	sign func(signed []byte) []byte
	jwk  jwk
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaTestKey(t *testing.T, kid string) testKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, alg: "RS256",
		sign: func(signed []byte) []byte {
			h := sha256.Sum256(signed)
			sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, h[:])
			if err != nil {
				t.Fatal(err)
			}
			return sig
		},
		jwk: jwk{Kty: "RSA", Kid: kid, N: b64(k.N.Bytes()), E: b64(big.NewInt(int64(k.E)).Bytes())},
	}
}

func ecTestKey(t *testing.T, kid string, curve elliptic.Curve) testKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	size := (curve.Params().BitSize + 7) / 8
	alg, crv := map[int]string{256: "ES256", 384: "ES384", 521: "ES512"}[curve.Params().BitSize], curve.Params().Name
	point, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, alg: alg,
		sign: func(signed []byte) []byte {
			var digest []byte
			switch alg {
			case "ES256":
				h := sha256.Sum256(signed)
				digest = h[:]
			case "ES384":
				h := sha512.Sum384(signed)
				digest = h[:]
			default:
				h := sha512.Sum512(signed)
				digest = h[:]
			}
			r, s, err := ecdsa.Sign(rand.Reader, k, digest)
			if err != nil {
				t.Fatal(err)
			}
			sig := make([]byte, 2*size)
			r.FillBytes(sig[:size])
			s.FillBytes(sig[size:])
			return sig
		},
		jwk: jwk{Kty: "EC", Kid: kid, Crv: crv, X: b64(point[1 : 1+size]), Y: b64(point[1+size:])},
	}
}

func (k testKey) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": k.alg, "kid": k.kid})
	p, _ := json.Marshal(claims)
	signed := b64(h) + "." + b64(p)
	return signed + "." + b64(k.sign([]byte(signed)))
}

// TestJWKSVerify: a token verifies only against the published key that
// signed it, for each algorithm Kubernetes signs service-account tokens with;
// anything else is "cannot tell" (false), left to TokenReview.
func TestJWKSVerify(t *testing.T) {
	rsaKey := rsaTestKey(t, "r1")
	p256 := ecTestKey(t, "e1", elliptic.P256())
	p384 := ecTestKey(t, "e2", elliptic.P384())
	p521 := ecTestKey(t, "e3", elliptic.P521())
	stranger := rsaTestKey(t, "r1") // same kid, other key
	set := jwks{Keys: []jwk{rsaKey.jwk, p256.jwk, p384.jwk, p521.jwk}}
	claims := map[string]any{"iss": "https://kubernetes.default.svc", "aud": []string{"https://kubernetes.default.svc"}, "exp": 2000000000}
	good := rsaKey.token(t, claims)
	parts := strings.Split(good, ".")
	otherPayload, _ := json.Marshal(map[string]any{"iss": "https://evil"})

	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"RS256", good, true},
		{"ES256", p256.token(t, claims), true},
		{"ES384", p384.token(t, claims), true},
		{"ES512", p521.token(t, claims), true},
		{"signed by a key not in the set", stranger.token(t, claims), false},
		{"payload swapped", parts[0] + "." + b64(otherPayload) + "." + parts[2], false},
		{"signature truncated", parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-8], false},
		{"alg none", b64([]byte(`{"alg":"none","kid":"r1"}`)) + "." + parts[1] + ".", false},
		{"alg HS256 with the public key", b64([]byte(`{"alg":"HS256","kid":"r1"}`)) + "." + parts[1] + "." + parts[2], false},
		{"unknown kid", b64([]byte(`{"alg":"RS256","kid":"zz"}`)) + "." + parts[1] + "." + parts[2], false},
		{"two parts", parts[0] + "." + parts[1], false},
		{"not base64", "!!." + parts[1] + "." + parts[2], false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := set.verify(tc.token)
			if ok != tc.ok {
				t.Fatalf("verify = %v, want %v", ok, tc.ok)
			}
			if ok && (got.Issuer != "https://kubernetes.default.svc" || len(got.Audience) != 1 || got.Expiry != 2000000000) {
				t.Errorf("claims = %+v", got)
			}
		})
	}
}

// TestAudienceClaim: aud is a string or a list of strings.
func TestAudienceClaim(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`{"aud":"a"}`, []string{"a"}},
		{`{"aud":["a","b"]}`, []string{"a", "b"}},
		{`{}`, nil},
	} {
		var c jwtClaims
		if err := json.Unmarshal([]byte(tc.in), &c); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if strings.Join(c.Audience, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: aud %v, want %v", tc.in, c.Audience, tc.want)
		}
	}
}
