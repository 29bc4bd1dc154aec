package lab

import (
	"context"
	"fmt"
	"path/filepath"
)

// OperatorNamespace is where the lab's Sail Operator keeps the default
// revision's base release, as the namespace the real operator runs in.
const OperatorNamespace = "sail-operator"

// startIstio runs Istio's parts in every cluster (Options.RealIstio): the
// lab's Sail Operator (sail-lab), which installs Istio's charts for the
// cluster's Sail resources, and the kubelet of the istiod pods those charts
// make. Both run until the lab stops.
func (l *Lab) startIstio(bg context.Context) error {
	for _, c := range l.clusters {
		p, err := startProcess("sail-lab", filepath.Join(l.IstioDir, sailLabBinary), []string{
			"--kubeconfig=" + c.componentKubeconfig(),
			"--cluster=" + c.Name,
			"--charts=" + filepath.Join(l.IstioDir, istioChartsDir),
			"--operator-namespace=" + OperatorNamespace,
		}, filepath.Join(c.dir, "logs", "sail-lab.log"))
		if err != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		c.procs = append(c.procs, p)
		c.istiods = newIstiodKubelet(c, filepath.Join(l.IstioDir, pilotDiscoveryBinary), l.log)
		if c.private {
			if c.istiods.net, err = newPrivateNet(bg, c, l.clusters, l.log); err != nil {
				return err
			}
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c.istiods.Run(bg)
		}()
	}
	return nil
}

// Istiods lists the istiods the lab runs in the cluster (Options.RealIstio).
func (c *Cluster) Istiods() []IstiodInfo {
	if c.istiods == nil {
		return nil
	}
	return c.istiods.Istiods()
}

// Log is the path of a component's log, e.g. Log("sail-lab").
func (c *Cluster) Log(component string) string {
	return filepath.Join(c.dir, "logs", component+".log")
}
