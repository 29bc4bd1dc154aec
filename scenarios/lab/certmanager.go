package lab

import "path/filepath"

// certManagerBinary is cert-manager's controllers, built from
// scenarios/certmanager against the github.com/cert-manager/cert-manager
// module (CertManagerVersion).
const certManagerBinary = "cert-manager-controllers"

// CertManagerClusterResourceNamespace is where the lab's cert-manager looks
// for the Secrets of ClusterIssuers (upstream's default namespace name).
const CertManagerClusterResourceNamespace = "cert-manager"

// startCertManager starts cert-manager's controllers against the cluster.
// They run until the cluster stops. Started after the CRDs are installed,
// so their informers sync at once instead of backing off.
func (c *Cluster) startCertManager(run func(name string, args ...string) (*process, error), kubeconfig string) error {
	controllers := "*"
	if c.noApprover {
		controllers = "*,-" + certManagerApprover
	}
	_, err := run(certManagerBinary,
		"--kubeconfig="+kubeconfig,
		"--cluster-resource-namespace="+CertManagerClusterResourceNamespace,
		"--controllers="+controllers,
		"--v=1")
	return err
}

// certManagerApprover is cert-manager's default approver controller, which
// approves every CertificateRequest (without the webhook, unconditionally).
const certManagerApprover = "certificaterequests-approver"

// ServiceAccountSigningKey is the path of the PEM RSA key the cluster's API
// server signs service-account tokens with. Tests use it to mint tokens
// TokenRequest refuses to make, such as one that has already expired.
func (c *Cluster) ServiceAccountSigningKey() string { return filepath.Join(c.dir, "pki", "sa.key") }
