// Package emulator is the lab's data plane: what Envoy sidecars, east-west
// gateways, istiod's endpoint discovery and CA, kube-proxy and the helloworld
// app would do, for clusters where none of them can run (kwok pods run no
// containers).
//
// It decides everything from the clusters' APIs, never from flotilla's
// state. Per cluster it reads the Sail Istio resource (meshID, network,
// clusterName, trust domain, profile, remotePilotAddress), cacerts in the
// control-plane namespace, namespace labels, Istio Gateway resources and the
// east-west gateway Service's load-balancer address. It reads other clusters
// only through the remote secrets it finds there (istio/multiCluster=true),
// with their kubeconfigs and reader tokens, as istiod does.
//
// Addresses: a pod or node IP 10.L.b.c stands for loopback 127.L.(100+b).c
// (lab.Loopback); nothing is ever sent to 10/8. Per pod:
//
//   - helloworld pods (image examples-helloworld-*) answer GET /hello on
//     their container port at their loopback address. With a proxy (the
//     cluster has a control plane and the namespace has injection on) the
//     port takes mTLS with a workload certificate signed by the serving
//     control plane's cacerts intermediate, and plaintext (PERMISSIVE).
//   - processes exec'd in any pod (kwok runs them locally) send their HTTP
//     requests to the node's capture address, loopback(nodeIP):15001 (kwok's
//     exec environment sets http_proxy, see lab.Cluster): the emulator makes
//     the call as that cluster's client pod's sidecar would.
//   - a cluster with a cross-network Gateway (15443, AUTO_PASSTHROUGH) and an
//     east-west gateway Service with a load-balancer address gets a listener
//     on address:15443 that routes by SNI outbound_.<port>_._.<host> to a
//     local endpoint, passing TLS through.
//
// kwok does not tell an exec'd process which pod it runs in, only (through
// the lab's per-cluster exec config) which cluster: the client is the one
// running curl pod of that cluster; more than one is an error.
package emulator
