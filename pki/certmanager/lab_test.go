package certmanager_test

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/certmanager"
	"github.com/flotillamesh/flotilla/pki/issuer"
	"github.com/flotillamesh/flotilla/scenarios/lab"
)

// "bare" loses its cert-manager CRDs in TestLabBadInput.
var testLab = lab.NewSharedWith(lab.Options{Clusters: []string{"east", "west", "bare"}, CertManager: true})

func TestMain(m *testing.M) { os.Exit(testLab.Run(m)) }

const ns = "istio-system"

func connect(t testing.TB, name string) *kube.Cluster {
	t.Helper()
	kc, err := testLab.Get(t).Cluster(name).Connect()
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// TestLabIntermediatesAndProjection: cert-manager's own controllers issue
// each cluster's intermediate under the one root; cacerts matches it and
// follows a renewal forced as `cmctl renew` does.
func TestLabIntermediatesAndProjection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	trust := pki.NewBundle(root.Cert)
	issued := map[string]*certmanager.Issued{}

	// east has what an earlier version wrote: the root key in the cluster.
	east := connect(t, "east")
	writeLegacyRoot(t, ctx, east, root)

	for _, name := range []string{"east", "west"} {
		kc := connect(t, name)
		res, err := certmanager.Apply(ctx, kc, certmanager.Config{Cluster: name, Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		if res.RemovedLegacyRoot != (name == "east") {
			t.Errorf("%s: removed a legacy root: %v", name, res.RemovedLegacyRoot)
		}
		// The hub signs through its connection, as the server does.
		hub := &issuer.Controller{Cluster: kc, Signer: issuer.Signer{Cluster: name, Namespace: ns, Root: root}}
		go hub.Run(ctx)
		in, err := certmanager.WaitReady(ctx, kc, ns, nil)
		if err != nil {
			t.Fatal(err)
		}
		issued[name] = in
	}

	t.Run("each intermediate chains to the one root with the built-in profile", func(t *testing.T) {
		for name, in := range issued {
			if _, err := trust.Verify(append([]*x509Cert{in.Cert}, in.Chain...), time.Now(), ""); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if err := certmanager.CheckProfile(in.Cert, name, ns); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if _, ok := in.Cert.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("%s: key is %T, want ECDSA by default", name, in.Cert.PublicKey)
			}
		}
		if issued["east"].Cert.Equal(issued["west"].Cert) {
			t.Error("east and west got the same intermediate")
		}
	})

	t.Run("the hub issuer closes the pathlen gap", func(t *testing.T) {
		for name, in := range issued {
			if err := pki.CheckIntermediate(in.Cert, name, ns); err != nil {
				t.Errorf("%s: built-in profile check: %v", name, err)
			}
			if len(in.Chain) != 0 || string(in.CA) != string(root.CertPEM) {
				t.Errorf("%s: tls.crt holds %d certificates after the intermediate, ca.crt is not the root", name, len(in.Chain))
			}
		}
	})

	t.Run("no secret in any cluster holds the root key", func(t *testing.T) {
		holders, seen, err := testLab.Get(t).SecretsHolding(ctx, root.Cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(holders) > 0 {
			t.Fatalf("root key found in %v", holders)
		}
		if seen < 2 {
			t.Fatalf("looked at %d private keys: the walk missed the intermediates' secrets", seen)
		}
		gvr, _, err := east.Resource(ctx, certmanager.IssuerGVK)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := east.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, certmanager.RootIssuerName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("legacy Issuer %s: %v, want it deleted", certmanager.RootIssuerName, err)
		}
	})

	t.Run("the hub refuses what is not the cluster's intermediate, saying why", func(t *testing.T) {
		testRefusals(t, ctx, east)
	})

	t.Run("cacerts projection matches the intermediate, once", func(t *testing.T) {
		res, err := certmanager.Project(ctx, east, ns, trust, pki.Refuse)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != pki.Created {
			t.Errorf("first projection: %s, want created", res.Action)
		}
		got := readCACerts(t, ctx, east)
		if err := got.Validate(time.Now()); err != nil {
			t.Fatal(err)
		}
		if string(got.CACert) != string(pemOf(issued["east"].Cert)) || string(got.RootCert) != string(root.CertPEM) {
			t.Error("cacerts does not hold the issued intermediate and the pinned root")
		}
		res, err = certmanager.Project(ctx, east, ns, trust, pki.Refuse)
		if err != nil || res.Action != pki.Unchanged {
			t.Errorf("second projection: %v %v, want unchanged", res.Action, err)
		}
	})

	t.Run("the follower projects a forced renewal", func(t *testing.T) {
		fctx, stop := context.WithCancel(ctx)
		defer stop()
		results := make(chan pki.WriteResult, 16)
		go certmanager.Follow(fctx, east, ns, trust, pki.Refuse, func(r pki.WriteResult, err error) {
			if err == nil {
				results <- r
			}
		})
		if err := certmanager.Renew(ctx, east, ns); err != nil {
			t.Fatal(err)
		}
		renewed, err := certmanager.WaitReady(ctx, east, ns, issued["east"].Cert)
		if err != nil {
			t.Fatal(err)
		}
		if renewed.Key.Equal(issued["east"].Key) {
			t.Error("renewal kept the old key (rotationPolicy Always)")
		}
		for {
			select {
			case <-ctx.Done():
				t.Fatal("the follower never projected the renewed intermediate")
			case r := <-results:
				if r.Action != pki.Updated {
					continue
				}
				got := readCACerts(t, ctx, east)
				if string(got.CACert) == string(pemOf(renewed.Cert)) && got.CAKey.Equal(renewed.Key) {
					return
				}
			}
		}
	})
}

// TestLabNamedClusterIssuer: an intermediate signed by a user's
// ClusterIssuer (fronting an external root) instead of flotilla's.
func TestLabNamedClusterIssuer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	west := connect(t, "west")
	root, err := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	crns := lab.CertManagerClusterResourceNamespace
	if _, err := west.Kube.CoreV1().Namespaces().Apply(ctx, corev1ac.Namespace(crns), west.ApplyOptions()); err != nil {
		t.Fatal(err)
	}
	sec := corev1ac.Secret("corp-root", crns).WithType(corev1.SecretTypeTLS).
		WithData(map[string][]byte{"tls.crt": root.CertPEM, "tls.key": root.Key.Reveal()})
	if _, err := west.Kube.CoreV1().Secrets(crns).Apply(ctx, sec, west.ApplyOptions()); err != nil {
		t.Fatal(err)
	}
	ci := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
		"metadata": map[string]any{"name": "corp-root"},
		"spec":     map[string]any{"ca": map[string]any{"secretName": "corp-root"}},
	}}
	if _, err := west.Apply(ctx, ci); err != nil {
		t.Fatal(err)
	}
	cfg := certmanager.Config{Cluster: "west", Namespace: "istio-corp", RootIssuer: &certmanager.IssuerRef{Name: "corp-root", Kind: certmanager.ClusterIssuerKind}}
	if _, err := certmanager.Apply(ctx, west, cfg); err != nil {
		t.Fatal(err)
	}
	in, err := certmanager.WaitReady(ctx, west, cfg.Namespace, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.CACerts(pki.NewBundle(root.Cert), time.Now()); err != nil {
		t.Fatalf("intermediate from the ClusterIssuer: %v", err)
	}
	if _, err := west.Kube.CoreV1().Secrets(cfg.Namespace).Get(ctx, certmanager.RootSecretName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("root secret written although a root issuer was named: %v", err)
	}
	other, _ := pki.NewRoot(pki.Config{KeyAlgorithm: pki.ECDSAP256})
	if _, err := in.CACerts(pki.NewBundle(other.Cert), time.Now()); !errors.Is(err, pki.ErrUntrusted) {
		t.Errorf("projection against another pinned root: %v, want ErrUntrusted", err)
	}
}

// TestLabBadInput: clear errors for a cluster without cert-manager's CRDs
// and for issuers that do not exist.
func TestLabBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bare := connect(t, "bare")
	removeCertManagerCRDs(t, ctx, testLab.Get(t).Cluster("bare"))

	for _, tc := range []struct {
		name    string
		cluster *kube.Cluster
		cfg     certmanager.Config
		is      error
		says    []string
	}{
		{"no cert-manager CRDs", bare, certmanager.Config{Cluster: "bare", Namespace: ns}, certmanager.ErrCRDsMissing,
			[]string{"bare:", "cert-manager.io/v1", "cluster bare"}},
		{"missing ClusterIssuer", connect(t, "east"), certmanager.Config{Cluster: "east", Namespace: ns,
			RootIssuer: &certmanager.IssuerRef{Name: "no-such-ca", Kind: certmanager.ClusterIssuerKind}}, certmanager.ErrIssuerNotFound,
			[]string{"east:", "ClusterIssuer no-such-ca"}},
		{"missing Issuer", connect(t, "east"), certmanager.Config{Cluster: "east", Namespace: ns,
			RootIssuer: &certmanager.IssuerRef{Name: "no-such-ca"}}, certmanager.ErrIssuerNotFound,
			[]string{"east:", "Issuer istio-system/no-such-ca"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certmanager.Apply(ctx, tc.cluster, tc.cfg)
			if !errors.Is(err, tc.is) {
				t.Fatalf("Apply: %v, want %v", err, tc.is)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

func removeCertManagerCRDs(t *testing.T, ctx context.Context, c *lab.Cluster) {
	t.Helper()
	ax, err := apiextclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	list, err := ax.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range list.Items {
		if strings.HasSuffix(crd.Spec.Group, "cert-manager.io") {
			if err := ax.ApiextensionsV1().CustomResourceDefinitions().Delete(ctx, crd.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
	// Deletion is asynchronous: wait until discovery stops serving the group.
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client().Discovery().ServerResourcesForGroupVersion("cert-manager.io/v1")
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("cert-manager.io/v1 still served: %v", err)
	}
}

func readCACerts(t *testing.T, ctx context.Context, c *kube.Cluster) pki.CACerts {
	t.Helper()
	cc, err := pki.ReadCACerts(ctx, c, ns)
	if err != nil || cc == nil {
		t.Fatalf("read cacerts: %v (found %v)", err, cc != nil)
	}
	if !cc.Managed {
		t.Error("cacerts not labelled as flotilla's")
	}
	return cc.CACerts
}
