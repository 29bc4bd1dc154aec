package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"

	"github.com/flotillamesh/flotilla/deploy"
)

// Canonical is the spec as JSON with defaults applied and clusters sorted by
// name: two files that mean the same mesh give the same bytes. File paths
// (root.certFile, kubeconfig) are compared as written, not by content.
func (m *Mesh) Canonical() []byte {
	c := *m
	c.lines = nil
	c.Spec.Clusters = slices.Clone(m.Spec.Clusters)
	if m.Spec.PKI.Root != nil {
		r := *m.Spec.PKI.Root
		c.Spec.PKI.Root = &r
	}
	if cm := m.Spec.PKI.CertManager; cm != nil {
		cp := *cm
		if cm.IssuerRef != nil {
			ref := *cm.IssuerRef
			cp.IssuerRef = &ref
		}
		c.Spec.PKI.CertManager = &cp
	}
	c.Default()
	// Sidecar is the mode every spec had before dataplaneMode existed:
	// left out, so that their hashes (the journal's keys) stay the same.
	if c.Spec.DataplaneMode == deploy.DataplaneSidecar {
		c.Spec.DataplaneMode = ""
	}
	for i := range c.Spec.Clusters {
		if c.Spec.Clusters[i].DataplaneMode == deploy.DataplaneSidecar {
			c.Spec.Clusters[i].DataplaneMode = ""
		}
	}
	slices.SortStableFunc(c.Spec.Clusters, func(a, b Cluster) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(&c)
	if err != nil {
		// Every field is a string, bool, int or Duration: Marshal cannot fail.
		panic("spec: canonical form: " + err.Error())
	}
	return b
}

// Hash is a stable digest of the canonical spec, "sha256:<hex>", for plans
// and the apply journal.
func (m *Mesh) Hash() string {
	sum := sha256.Sum256(m.Canonical())
	return "sha256:" + hex.EncodeToString(sum[:])
}
