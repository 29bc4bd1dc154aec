// Package emulator is the lab's data plane: what Envoy sidecars and
// gateways, istio-agent, kube-proxy and the helloworld app would do, for
// clusters where none of them can run (kwok pods run no containers). The
// lab runs Istio itself (lab.Options.RealIstio): certificates, endpoints
// and listeners come from the real istiods over their CA and xDS, and
// injection from istiod's webhook; the emulator models no part of istiod.
//
// It decides everything from the clusters' APIs and istiod's answers, never
// from flotilla's state. Per cluster it reads nodes, namespaces, pods, and
// the gateway Services (label istio) with their load-balancer addresses and
// the Istio Gateway resources that select them.
//
// Addresses: a pod or node IP 10.L.b.c stands for loopback 127.L.(100+b).c
// (lab.Loopback); nothing is ever sent to 10/8. Per pod:
//
//   - helloworld pods (image examples-helloworld-*) answer GET /hello on
//     their container port at their loopback address. With a proxy the port
//     takes mTLS with the workload certificate istiod's CA issued, and
//     plaintext (PERMISSIVE).
//   - every running pod gets a capture listener at its own loopback
//     address, port 15001, and a kwok Exec (lab.PodExec, owned by the pod)
//     whose environment sets http_proxy to it: kwok runs processes exec'd in
//     the pod locally with that environment, so the emulator knows which pod
//     calls and makes the call as that pod's sidecar (or, without one,
//     kube-proxy) would. A pod watch triggers a sync, so the Exec is there
//     within moments of the pod running. Once a pod's listeners and Exec
//     are in place the emulator annotates it lab.DataPlaneAnnotation=ready,
//     and only then does kwok mark it Ready (the lab's pod stages): a pod
//     that callers see Ready has its data plane, as a sidecar's readiness
//     probe guarantees in a real cluster.
//   - until then kwok uses the lab's ClusterExec, whose http_proxy is the
//     node's capture address, loopback(nodeIP):15001; a request there is
//     taken as the cluster's one running curl pod's, and fails when there
//     are several.
//   - a cluster with a cross-network Gateway (15443, AUTO_PASSTHROUGH) and an
//     east-west gateway Service with a load-balancer address gets a listener
//     on address:15443 once istiod configured the gateway (below).
//
// Injection is istiod's webhook's. Gateway pods (injection template
// gateway, selected by their own labels) are marked by the lab's stand-in
// only in labs without RealIstio (package lab, injection.go), where no
// emulator runs, so that flotilla's apply, which waits for its gateways to
// be injected, passes in every lab.
//
// Per injected pod: for every running pod with an istio-proxy container (native sidecar or
// classic) it plays istio-agent from what the injector wrote in that
// container: CA_ADDR and PROXY_CONFIG's discoveryAddress (a Service name,
// resolved to a ready endpoint at its loopback stand-in: in a remote, the
// chart's istiod Service whose EndpointSlice holds the primary's gateway
// address; or an address, an external control plane's ingress, dialled at
// its stand-in: remote.go), TRUST_DOMAIN and the ISTIO_META_* variables. It trusts istiod with the root in the pod's
// namespace's istio-ca-root-cert ConfigMap, authenticates with a
// TokenRequest token for the pod's service account (audience istio-ca,
// bound to the pod) and the ClusterID header, asks istiod's CA
// (IstioCertificateService/CreateCertificate) for the workload certificate
// of spiffe://<trust domain>/ns/<ns>/sa/<sa> and renews it at half its
// life, and holds an ADS stream as the pod's proxy (node
// sidecar~<pod IP>~<pod>.<ns>~<ns>.svc.cluster.local, router~... for a
// gateway) that subscribes to every cluster and then to the endpoints of
// each EDS cluster. A call from the pod takes the endpoints istiod sent for
// outbound|<port>||<host> (in another network, the east-west gateway that
// istiod's network view put in their place) over the transport socket that
// the cluster's transport socket matches pick for the endpoint's metadata:
// for tlsMode istio, mTLS with istiod's SNI, checking the peer's chain
// against the root istiod's CA returned and its identity against the SANs
// istiod named; the helloworld sidecar presents the certificate istiod
// issued. The pod is marked data-plane ready only once its certificate and
// its clusters and endpoints are in place. Injection is then left to
// istiod's webhook: a pod whose istio-proxy container was not injected (no
// sidecar.istio.io/status; the template's image auto) gets no agent and
// never turns Ready, as no kubelet could run it. An east-west gateway's
// 15443 listener opens once a gateway pod (label istio=<selector>) has a
// ready agent, connected as a router node, and passes a connection to an
// endpoint istiod sent that router for the cluster its SNI names
// (AUTO_PASSTHROUGH's SNI-DNAT clusters). A gateway's router also takes
// its listeners from istiod, and each Service port whose target port has a
// TLS passthrough listener (istiod exposed on 15012 and 15017 by a Gateway
// in PASSTHROUGH mode) opens on the gateway's address and passes the
// connection to an endpoint of the tcp_proxy cluster of the filter chain
// that matches its SNI (passthrough.go): that is how a remote's proxies and
// API server reach the primary's or the external istiod. Still read from
// the clusters: which gateway Services take 15443 (a Gateway
// resource with AUTO_PASSTHROUGH selecting them, and their load-balancer
// address), not from istiod's listeners; the inbound side accepts any peer
// of the trust domain that chains to istiod's root (no authorization
// policies are played).
//
// Ambient mode (ztunnel.go, hbone.go): every running
// pod of the ztunnel chart's DaemonSet gets a ztunnel that connects to
// istiod as that pod (XDS_ADDRESS/CA_ADDRESS of its container, a token of
// its service account for audience istio-ca bound to it, node ztunnel~...),
// subscribes to istio.workload.Address over delta xDS (wildcard) and keeps
// what istiod sends; the pod is marked ready once the first response came.
// For a pod that ambient mode captures (istio.io/dataplane-mode=ambient on
// its namespace or itself, no sidecar) on a node where an istio-cni node
// pod runs, the emulator plays istio-cni's node agent: once that node's
// ztunnel has istiod's view, it annotates the pod
// ambient.istio.io/redirection=enabled (from which istiod gives the
// workload tunnel protocol HBONE), and only then is the pod ready (without
// istio-cni on the node the pod runs unredirected, as without the CNI
// plugin). A call from a redirected pod goes through its node's ztunnel: the source must be a
// workload of istiod's view (else it is refused, as ztunnel refuses an
// unknown source), the destination service and its healthy workloads are
// those of istiod's view, and the certificates are istiod's, asked for by
// the ztunnel with ImpersonatedIdentity. HBONE is mTLS (TLS 1.3, ALPN h2)
// to the workload's address at 15008, where the emulator listens for every
// ambient pod, then one HTTP/2 CONNECT to <pod IP>:<target port>, joined
// there to the app (an inner CONNECT may name the service instead:
// hostname:service port, the workload's port for it).
//
// Ambient multi-network (eastwest.go): a workload istiod's view puts in
// another network than the ztunnel's (NETWORK) is reached only through
// the network gateway istiod names on it (for a global service, istiod's
// one coalesced workload per other network, weighted by capacity), by
// double HBONE: mTLS to the gateway's address and HBONE port checked
// against the gateway workload's identity, an outer CONNECT naming the
// service, inside it an inner mTLS session with the source's certificate
// and an inner CONNECT naming the service with x-istio-origin-network. A
// Gateway API Gateway of class istio-east-west with a status address (from
// istiod's deployment controller and the lab's load balancer) opens its
// HBONE port there once a pod of it (rendered by istiod, label
// gateway.istio.io/managed; its agent runs as for an injected pod) has a
// ready agent: it ends the outer tunnel with the identity istiod's CA gave
// that pod and passes the inner one unread to the HBONE port of a local
// HBONE workload of the service. Which workload is taken from istiod's
// workload view (the cluster's ztunnel's), not from the gateway Envoy's
// own listeners and clusters. Not played: waypoints, authorization
// policies, hostname gateway addresses.
package emulator
