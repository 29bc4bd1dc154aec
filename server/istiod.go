package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// IstiodView is what one istiod reports of itself, read the way istioctl
// remote-clusters reads it: /debug/clusterz on istiod's monitoring port,
// through the API server's pod proxy (pods/proxy on istiod's pods).
type IstiodView struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// RemoteClusters maps each remote cluster istiod knows to its sync
	// status ("synced", "syncing", "timeout", ...).
	RemoteClusters map[string]string `json:"remoteClusters,omitempty"`
	Error          string            `json:"error,omitempty"`
}

// istiodMonitoringPort is the chart's http-monitoring port, where istiod
// serves its debug endpoints.
const istiodMonitoringPort = 15014

// readIstiods asks every running istiod pod of the cluster (label
// app=istiod, any namespace) for its clusterz.
func readIstiods(ctx context.Context, kc *kube.Cluster) ([]IstiodView, error) {
	pods, err := kc.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod", FieldSelector: "status.phase=Running"})
	if err != nil {
		return nil, fmt.Errorf("%s: list istiod pods: %w", kc.Name, err)
	}
	var out []IstiodView
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		v := IstiodView{Namespace: p.Namespace, Pod: p.Name}
		body, err := kc.Kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(monitoringPort(&p)), "/debug/clusterz", nil).DoRaw(ctx)
		if err != nil {
			v.Error = fmt.Sprintf("%s: pod %s/%s: /debug/clusterz: %v", kc.Name, p.Namespace, p.Name, err)
			out = append(out, v)
			continue
		}
		var clusters []struct {
			ID         string `json:"id"`
			SyncStatus string `json:"syncStatus"`
		}
		if err := json.Unmarshal(body, &clusters); err != nil {
			v.Error = fmt.Sprintf("%s: pod %s/%s: /debug/clusterz: %v", kc.Name, p.Namespace, p.Name, err)
			out = append(out, v)
			continue
		}
		v.RemoteClusters = map[string]string{}
		for _, c := range clusters {
			v.RemoteClusters[c.ID] = c.SyncStatus
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Pod < out[j].Namespace+"/"+out[j].Pod })
	return out, nil
}

func monitoringPort(p *corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "http-monitoring" {
				return int(cp.ContainerPort)
			}
		}
	}
	return istiodMonitoringPort
}

// istiodCheck says whether the cluster's istiods see every cluster its
// remote secrets name, synced. It is nil for a cluster that runs no istiod
// (a remote, a data plane, or a control plane not installed yet).
func istiodCheck(c ClusterStatus) *Check {
	if len(c.Istiods) == 0 {
		return nil
	}
	ck := &Check{Name: "istiod sees remote clusters", Cluster: c.Name}
	var problems []string
	seen := map[string]string{}
	for _, v := range c.Istiods {
		if v.Error != "" {
			problems = append(problems, v.Error)
			continue
		}
		for id, st := range v.RemoteClusters {
			seen[id] = st
			if st != "synced" {
				problems = append(problems, fmt.Sprintf("istiod %s/%s: cluster %s is %s", v.Namespace, v.Pod, id, st))
			}
		}
	}
	for _, rs := range c.RemoteSecrets {
		if !rs.Expected {
			continue
		}
		if _, ok := seen[rs.Target]; !ok {
			problems = append(problems, fmt.Sprintf("no istiod knows cluster %s (secret %s/%s)", rs.Target, rs.Namespace, rs.Name))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		ck.Message = strings.Join(problems, "; ")
		ck.Hint = "istiod reads remote clusters with the remote secrets' reader tokens: run flotilla apply, then look at istiod's log for the remote cluster's sync errors (a missing permission in the reader's ClusterRole shows there)"
		return ck
	}
	ck.OK = true
	var ids []string
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	ck.Message = "synced: " + strings.Join(ids, ", ")
	return ck
}
