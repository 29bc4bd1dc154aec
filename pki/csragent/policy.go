package csragent

import (
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/csrpolicy"
)

// workloadPolicy is what the agent lets reach cert-manager for id: exactly
// id's SPIFFE URI as the only SAN of any kind, RSA >= 2048 or P-256/P-384,
// no subject beyond istio-agent's, and never a CA.
func workloadPolicy(id pki.SPIFFEID) csrpolicy.Chain {
	return csrpolicy.Chain{
		csrpolicy.DefaultKey,
		csrpolicy.ExactSANs{Want: []csrpolicy.GeneralName{csrpolicy.URI(id.String())}},
		csrpolicy.IstioAgentSubject{},
		csrpolicy.BasicConstraints{CA: false},
	}
}
