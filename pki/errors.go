package pki

import "errors"

// Distinct errors for each kind of bad input, so callers (and tests) can
// tell them apart with errors.Is while the messages stay human.
var (
	ErrUnknownKeyAlgorithm = errors.New("unknown key algorithm")
	ErrInvalidClusterName  = errors.New("invalid cluster name")
	ErrInvalidNamespace    = errors.New("invalid namespace")
	ErrInvalidPEM          = errors.New("invalid PEM")
	ErrKeyMismatch         = errors.New("private key does not match certificate")
	ErrNotCA               = errors.New("certificate is not a CA (CA:false)")
	ErrExpired             = errors.New("certificate has expired")
	ErrNotYetValid         = errors.New("certificate is not yet valid")
	ErrKeyUsage            = errors.New("certificate key usage does not allow certificate signing")
	ErrPathLen             = errors.New("certificate path length does not allow the chain")
	ErrProfile             = errors.New("intermediate does not have the required profile")
	ErrUntrusted           = errors.New("certificate does not chain to the trust bundle")
	ErrSPIFFEID            = errors.New("invalid or unexpected SPIFFE ID")
	ErrNoRootKey           = errors.New("root key is not held by flotilla (offline root)")
	ErrInvalidCACerts      = errors.New("invalid cacerts")
	// ErrConflict is matched by every *ConflictError.
	ErrConflict = errors.New("cacerts conflict")
)
