package certmanager

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/pki"
	"github.com/flotillamesh/flotilla/pki/issuer/v1alpha1"
)

// Removed lists what Remove deleted, as "Kind namespace/name".
type Removed []string

// certificateNameAnnotation is what cert-manager puts on the requests and
// secrets of a Certificate.
const certificateNameAnnotation = "cert-manager.io/certificate-name"

// Remove deletes every cert-manager object flotilla made in namespace of
// a cluster that leaves the mesh: its Certificates (the intermediate, the
// csr-agent's and istiod's), the Secrets they were issued into, the
// CertificateRequests made for them or for the hub, its Issuers and the
// MeshIssuer, and what earlier versions wrote (the root key's Secret).
// Only objects carrying flotilla's managed-by label, or made by
// cert-manager for such a Certificate, go. The MeshIssuer CRD stays: it
// is cluster-wide and deleting it is the operator's call.
func Remove(ctx context.Context, c *kube.Cluster, namespace string) (Removed, error) {
	var out Removed
	var errs []error
	sel := metav1.ListOptions{LabelSelector: pki.ManagedByLabel + "=" + pki.ManagedByValue}
	del := func(gvr schema.GroupVersionResource, kind, name string) {
		err := c.Dynamic.Resource(gvr).Namespace(namespace).Delete(ctx, name, c.DeleteOptions())
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: delete %s %s/%s: %w", c.Name, kind, namespace, name, err))
		default:
			out = append(out, fmt.Sprintf("%s %s/%s", kind, namespace, name))
		}
	}
	secrets := schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

	certs := map[string]bool{}
	if gvr, _, err := c.Resource(ctx, CertificateGVK); err == nil {
		list, err := c.Dynamic.Resource(gvr).Namespace(namespace).List(ctx, sel)
		if err != nil {
			return nil, fmt.Errorf("%s: list Certificates in %s: %w", c.Name, namespace, err)
		}
		for _, crt := range list.Items {
			certs[crt.GetName()] = true
			secret, _, _ := unstructured.NestedString(crt.Object, "spec", "secretName")
			del(gvr, "Certificate", crt.GetName())
			if secret != "" {
				del(secrets, "Secret", secret)
			}
		}
	}
	if gvr, _, err := c.Resource(ctx, CertificateRequestGVK); err == nil {
		list, err := c.Dynamic.Resource(gvr).Namespace(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("%s: list CertificateRequests in %s: %w", c.Name, namespace, err)
		}
		for _, cr := range list.Items {
			group, _, _ := unstructured.NestedString(cr.Object, "spec", "issuerRef", "group")
			if certs[cr.GetAnnotations()[certificateNameAnnotation]] || cr.GetLabels()["flotilla.dev/csr-agent"] == "true" || group == v1alpha1.Group {
				del(gvr, "CertificateRequest", cr.GetName())
			}
		}
	}
	for _, gvk := range []schema.GroupVersionKind{IssuerGVK, v1alpha1.MeshIssuerGVK} {
		gvr, _, err := c.Resource(ctx, gvk)
		if err != nil {
			continue // kind not served: nothing of it to delete
		}
		list, err := c.Dynamic.Resource(gvr).Namespace(namespace).List(ctx, sel)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: list %s in %s: %w", c.Name, gvk.Kind, namespace, err))
			continue
		}
		for _, o := range list.Items {
			del(gvr, gvk.Kind, o.GetName())
		}
	}
	if s, err := c.Kube.CoreV1().Secrets(namespace).Get(ctx, RootSecretName, metav1.GetOptions{}); err == nil && s.Labels[pki.ManagedByLabel] == pki.ManagedByValue {
		del(secrets, "Secret", RootSecretName)
	}
	return out, errors.Join(errs...)
}
