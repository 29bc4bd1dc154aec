package federation

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"
)

// checkKubeconfigInputs refuses what a kubeconfig cannot carry as given:
// the YAML writer replaces invalid UTF-8 (found by FuzzKubeconfig: a cluster
// named "\xa5" came back as "\ufffd", so the context named no cluster).
// Cluster names are DNS-1123 labels as the spec requires; a token is a
// bearer token's characters (RFC 6750), and is never quoted in the error.
func checkKubeconfigInputs(cluster string, ep Endpoint, token string) error {
	if errs := validation.IsDNS1123Label(cluster); len(errs) > 0 {
		return fmt.Errorf("kubeconfig for %q: the cluster name is not a DNS-1123 label: %s", cluster, strings.Join(errs, "; "))
	}
	if !utf8.ValidString(ep.Server) || !utf8.ValidString(ep.TLSServerName) {
		return fmt.Errorf("kubeconfig for %s: the server address or TLS server name is not valid UTF-8", cluster)
	}
	for _, r := range token {
		if !bearerTokenChar(r) {
			return fmt.Errorf("kubeconfig for %s: the reader token holds a character no bearer token has", cluster)
		}
	}
	return nil
}

// bearerTokenChar: RFC 6750's b64token characters (JWTs are base64url and
// dots).
func bearerTokenChar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("-._~+/=", r)
}
