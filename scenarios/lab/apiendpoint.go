package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The API server as the cluster's own network sees it, for labs that run
// real Istio: a real API server publishes itself as the endpoint of the
// default/kubernetes Service (its endpoint reconciler), which is how
// in-cluster clients, and an east-west gateway that passes TLS through to
// kubernetes.default.svc, reach it. The lab's API servers listen on
// 127.0.0.1 and run without that reconciler (--endpoint-reconciler-type=none:
// they would publish 192.0.2.2), so the lab publishes the endpoint itself:
// node-range address 10.L.0.(200+i) on the API server's port, and forwards
// that address's loopback stand-in (Loopback: 127.L.100.(200+i)) to the
// API server, TCP untouched.

// apiEndpointIP is cluster i's API server endpoint address (10.L.0.(200+i)).
func apiEndpointIP(octet, i int) string { return fmt.Sprintf("10.%d.0.%d", octet, 200+i) }

// APIEndpoint is the address (ip:port) the cluster publishes as the
// default/kubernetes Service's endpoint; "" in labs without real Istio.
func (c *Cluster) APIEndpoint() string {
	if !c.realIstio {
		return ""
	}
	u, err := url.Parse(c.Server)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(apiEndpointIP(c.octet, c.Index), u.Port())
}

// runAPIEndpoint forwards the endpoint's loopback stand-in to the API
// server and keeps the kubernetes Service's EndpointSlice naming it, until
// ctx ends.
func runAPIEndpoint(ctx context.Context, c *Cluster, logw io.Writer) {
	ep := c.APIEndpoint()
	host, portStr, err := net.SplitHostPort(ep)
	if err != nil {
		fmt.Fprintf(logw, "lab: %s: API server endpoint: %v\n", c.Name, err)
		return
	}
	lb, _ := Loopback(net.ParseIP(host))
	ln, err := net.Listen("tcp", net.JoinHostPort(lb.String(), portStr))
	if err != nil {
		fmt.Fprintf(logw, "lab: %s: API server endpoint %s: %v\n", c.Name, ep, err)
		return
	}
	go func() { <-ctx.Done(); ln.Close() }()
	target := net.JoinHostPort("127.0.0.1", portStr)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go forwardTCP(conn, target)
		}
	}()
	port, _ := strconv.Atoi(portStr)
	name, proto := "https", corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "flotilla-lab"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: ptrTo(int32(port)), Protocol: &proto}},
	}
	_ = wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client().DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return true, nil
		}
		fmt.Fprintf(logw, "lab: %s: API server endpoint slice: %v\n", c.Name, err)
		return false, nil
	})
	<-ctx.Done()
}

// forwardTCP copies conn to and from a new connection to target (loopback).
func forwardTCP(conn net.Conn, target string) {
	defer conn.Close()
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, conn); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

func ptrTo[T any](v T) *T { return &v }
