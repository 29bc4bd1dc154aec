package gateways

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Address is where other clusters reach a gateway.
type Address struct {
	// Host is an IP address or a DNS name.
	Host string
	// Ports maps the Service's port names to the port reachable at Host: the
	// port itself, or the node port for a NodePort Service.
	Ports map[string]int32
}

func (a Address) String() string { return a.Host }

// PollInterval is how often WaitForAddress looks at the Service.
const PollInterval = time.Second

// LookupAddress reads a gateway Service's external address once. ok is false
// while it has none: no Service yet, or no load balancer address yet.
//
// The address is, by Service type: a LoadBalancer's first ingress IP or
// hostname; else the first spec.externalIPs entry (a fixed address); else,
// for a NodePort, the first node's ExternalIP (InternalIP when it has none).
// A ClusterIP Service without externalIPs never has one.
func LookupAddress(ctx context.Context, c *kube.Cluster, namespace, name string) (addr Address, ok bool, err error) {
	svc, err := c.Kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Address{}, false, nil
	}
	if err != nil {
		return Address{}, false, fmt.Errorf("%s: read service %s/%s: %w", c.Name, namespace, name, err)
	}
	addr.Ports = map[string]int32{}
	for _, p := range svc.Spec.Ports {
		addr.Ports[p.Name] = p.Port
	}
	switch {
	case svc.Spec.Type == corev1.ServiceTypeLoadBalancer:
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				addr.Host = in.IP
				return addr, true, nil
			}
			if in.Hostname != "" {
				addr.Host = in.Hostname
				return addr, true, nil
			}
		}
		return Address{}, false, nil
	case len(svc.Spec.ExternalIPs) > 0:
		addr.Host = svc.Spec.ExternalIPs[0]
		return addr, true, nil
	case svc.Spec.Type == corev1.ServiceTypeNodePort:
		host, err := nodeAddress(ctx, c)
		if err != nil || host == "" {
			return Address{}, false, err
		}
		for _, p := range svc.Spec.Ports {
			addr.Ports[p.Name] = p.NodePort
		}
		addr.Host = host
		return addr, true, nil
	}
	return Address{}, false, nil
}

func nodeAddress(ctx context.Context, c *kube.Cluster) (string, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("%s: list nodes for a node port address: %w", c.Name, err)
	}
	for _, want := range []corev1.NodeAddressType{corev1.NodeExternalIP, corev1.NodeInternalIP} {
		for _, n := range nodes.Items {
			for _, a := range n.Status.Addresses {
				if a.Type == want && a.Address != "" {
					return a.Address, nil
				}
			}
		}
	}
	return "", nil
}

// WaitForAddress waits up to timeout for the gateway Service namespace/name
// to have an external address (see LookupAddress) and returns it. progress,
// if not nil, receives a line when the wait starts, every ten seconds while
// it lasts, and when it ends. On timeout the error names the cluster and the
// Service:
//
//	east: service istio-system/istio-eastwestgateway got no external address within 2m
func WaitForAddress(ctx context.Context, c *kube.Cluster, namespace, name string, timeout time.Duration, progress func(string)) (Address, error) {
	say := func(format string, args ...any) {
		if progress != nil {
			progress(fmt.Sprintf("%s: service %s/%s: ", c.Name, namespace, name) + fmt.Sprintf(format, args...))
		}
	}
	start := time.Now()
	deadline := start.Add(timeout)
	lastSaid := start
	say("waiting for an external address (up to %s)", shortDuration(timeout))
	for {
		// Each read gets its own bound, so that a slow API server cannot
		// turn the wait's timeout into a read error.
		readCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		addr, ok, err := LookupAddress(readCtx, c, namespace, name)
		cancel()
		if ctx.Err() != nil {
			return Address{}, fmt.Errorf("%s: waiting for service %s/%s external address: %w", c.Name, namespace, name, ctx.Err())
		}
		if err != nil {
			return Address{}, err
		}
		if ok {
			say("external address %s", addr.Host)
			return addr, nil
		}
		now := time.Now()
		if !now.Before(deadline) {
			return Address{}, fmt.Errorf("%s: service %s/%s got no external address within %s%s",
				c.Name, namespace, name, shortDuration(timeout), hint(ctx, c, namespace, name))
		}
		if now.Sub(lastSaid) >= 10*time.Second {
			lastSaid = now
			say("still no external address after %s", shortDuration(now.Sub(start).Round(time.Second)))
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(PollInterval, deadline.Sub(now))):
		}
	}
}

// hint says why a Service has no address when the reason is visible.
func hint(ctx context.Context, c *kube.Cluster, namespace, name string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	svc, err := c.Kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return " (the service does not exist)"
	case err != nil:
		return ""
	case svc.Spec.Type == corev1.ServiceTypeLoadBalancer:
		return " (type LoadBalancer: is a load balancer controller running in the cluster? else expose the gateway as NodePort or with a fixed address)"
	case svc.Spec.Type == corev1.ServiceTypeClusterIP:
		return " (type ClusterIP without externalIPs is not reachable from other clusters)"
	}
	return ""
}

// shortDuration prints 2m rather than 2m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
