package federation

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flotillamesh/flotilla/deploy"
)

// TestLabGatewayPathSecret: the secret that reads a cluster whose
// apiServerAccess is gateway names the gateway's address and API server
// port as its server and kubernetes.default.svc as tls-server-name, and
// the reader authenticates with it: the lab API server's certificate
// carries that name. (The gateway passes TLS through, so what the reader
// verifies is the API server's certificate; here the lab API server's own
// address stands where the gateway's would be. The scenario with a real
// gateway path is scenarios/realistio.) The other direction stays direct,
// and a gateway with no address yet fails that link only, naming it.
func TestLabGatewayPathSecret(t *testing.T) {
	ctx := ctxFor(t)
	o := Options{Namespace: "gwpath-system", AllowLoopback: true}
	west := Member{Name: "west", Network: "n2", APIServerAccess: deploy.APIServerViaGateway}
	m := labMesh(t, MultiPrimary, Member{Name: "east", Network: "n1"}, west)
	u, err := url.Parse(testLab.Get(t).Cluster("west").Server)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	gw := GatewayPath{Host: u.Hostname(), Port: int32(port)}

	// No gateway address yet: east cannot read west; west reads east.
	res, err := Reconcile(ctx, m, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range res.Targets {
		switch {
		case tr.Cluster == "west" && (tr.Err == nil || !strings.Contains(tr.Err.Error(), "west: apiServerAccess gateway: its east-west gateway has no address")):
			t.Errorf("west without a gateway address: err %v", tr.Err)
		case tr.Cluster == "east" && tr.Err != nil:
			t.Errorf("east: %v", tr.Err)
		}
	}
	for _, lr := range res.Links {
		if failed := lr.Err != nil; failed != (lr.Target == "west") {
			t.Errorf("%s: err %v", lr.Link, lr.Err)
		}
	}

	m.Clusters[1].Gateway = &gw
	res, err = Reconcile(ctx, m, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{}
	for _, tr := range res.Targets {
		paths[tr.Cluster] = tr.Endpoint.Path()
	}
	if want := "via gateway " + gw.String(); paths["west"] != want {
		t.Errorf("west read %q, want %q", paths["west"], want)
	}
	if !strings.HasPrefix(paths["east"], "direct https://") {
		t.Errorf("east read %q, want direct", paths["east"])
	}
	for _, lr := range res.Links {
		s, err := admin(t, lr.Reader).CoreV1().Secrets(lr.Namespace).Get(ctx, lr.Secret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.Load(s.Data[lr.Target])
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Clusters[lr.Target]
		if lr.Target == "west" {
			if c.Server != "https://"+net.JoinHostPort(gw.Host, strconv.Itoa(int(gw.Port))) || c.TLSServerName != "kubernetes.default.svc" {
				t.Errorf("%s: server %s tls-server-name %q, want the gateway path and kubernetes.default.svc", lr.Link, c.Server, c.TLSServerName)
			}
		} else if c.TLSServerName != "" {
			t.Errorf("%s: direct path with tls-server-name %q", lr.Link, c.TLSServerName)
		}
		assertReads(t, ctx, lr, false)
	}
}
