package spec

import (
	"context"
	"os"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

var testLab = lab.NewShared("east", "west")

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

// TestLabSpecReachesClusters checks the spec against the lab's real
// kubeconfig: contexts resolve, loopback servers are refused unless allowed,
// and each cluster's resolved kubeconfig/context reaches that cluster.
func TestLabSpecReachesClusters(t *testing.T) {
	l := testLab.Get(t)
	ctx := context.Background()
	spec := func(allowLoopback bool, westContext string) *Mesh {
		lines := []string{"  topology: multi-primary"}
		if allowLoopback {
			lines = append(lines, "  allowLoopbackAPIServers: true")
		}
		lines = append(lines, "  clusters:",
			"  - {name: east, context: east, network: network1}",
			"  - {name: west, context: "+westContext+", network: network2}")
		return mustParse(t, mesh(lines...))
	}

	err := CheckInputs(ctx, spec(false, "west"), l.Kubeconfig)
	west := l.Cluster("west")
	for _, want := range []string{
		`spec.clusters[0].apiServer: cluster east: other clusters read this one, but context "east" points at ` + l.Cluster("east").Server,
		`spec.clusters[1].apiServer: cluster west: other clusters read this one, but context "west" points at ` + west.Server,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("loopback lab servers without allowLoopbackAPIServers: %v\nwant %q", err, want)
		}
	}

	err = CheckInputs(ctx, spec(true, "north"), l.Kubeconfig)
	if want := `spec.clusters[1].context: cluster west: context "north" not found in kubeconfig ` + l.Kubeconfig; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("missing context: %v\nwant %q", err, want)
	}

	m := spec(true, "west")
	if err := CheckInputs(ctx, m, l.Kubeconfig); err != nil {
		t.Fatalf("lab spec rejected: %v", err)
	}
	for _, c := range m.Spec.Clusters {
		kc, err := kube.FromKubeconfig(c.Name, c.KubeconfigFor(l.Kubeconfig), c.Context)
		if err != nil {
			t.Fatal(err)
		}
		if kc.Config.Host != l.Cluster(c.Name).Server {
			t.Errorf("%s: resolved to %s, want %s", c.Name, kc.Config.Host, l.Cluster(c.Name).Server)
		}
		if _, err := kc.Kube.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
			t.Errorf("%s: %v", c.Name, err)
		}
	}
}
