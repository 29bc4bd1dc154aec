package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/flotillamesh/flotilla/deploy/kube"
)

// Names and ports of the replicated hub's objects.
const (
	HubName            = "flotilla-hub"        // StatefulSet and API Service
	HubGossipService   = "flotilla-hub-gossip" // headless: stable names for --join
	HubStateKeySecret  = "flotilla-hub-state-key"
	HubGossipKeySecret = "flotilla-hub-gossip-key"
	HubTokenSecret     = "flotilla-hub-token"
	HubEtcdTLSSecret   = "flotilla-hub-etcd-tls" // ca.crt, tls.crt, tls.key
	HubAPIPort         = 8443
	HubGossipPort      = 7946
	hubSecretsDir      = "/var/run/secrets/flotilla"
)

// HubOptions configure the manifests of a hub run as replicas sharing an
// etcd state.
type HubOptions struct {
	// Namespace; "" is flotilla-system.
	Namespace string
	// Image runs `flotilla server`; required.
	Image string
	// Replicas; 0 is 3 (one may be lost, and a majority still reads alike).
	Replicas int32
	// EtcdEndpoints are host:port of the etcd members; required.
	EtcdEndpoints []string
	// EtcdPrefix is where the state lives in etcd; "" is /flotilla.
	EtcdPrefix string
	// EtcdTLS mounts Secret flotilla-hub-etcd-tls and reaches etcd with it.
	EtcdTLS bool
}

// HubObjects are the objects that run the hub's replicas, in apply order:
// the headless gossip Service, the API Service and the StatefulSet. The
// Secrets they mount (state key, gossip key, API token, and with EtcdTLS
// the etcd client certificate) are the operator's to create: flotilla never
// writes its own keys into a cluster.
func HubObjects(o HubOptions) ([]kube.Object, error) {
	ns := or(o.Namespace, "flotilla-system")
	if o.Image == "" {
		return nil, errors.New("hub: no image")
	}
	if len(o.EtcdEndpoints) == 0 {
		return nil, errors.New("hub: replicas share an etcd state: no etcd endpoints")
	}
	replicas := o.Replicas
	if replicas == 0 {
		replicas = 3
	}
	labels := map[string]string{"app": HubName, "app.kubernetes.io/managed-by": "flotilla"}
	sel := map[string]string{"app": HubName}
	gossip := corev1ac.Service(HubGossipService, ns).WithLabels(labels).WithSpec(corev1ac.ServiceSpec().
		WithClusterIP(corev1.ClusterIPNone).
		// Replicas must find each other before they are ready: readiness
		// needs etcd, not the ring.
		WithPublishNotReadyAddresses(true).
		WithSelector(sel).
		WithPorts(
			corev1ac.ServicePort().WithName("gossip-tcp").WithProtocol(corev1.ProtocolTCP).WithPort(HubGossipPort).WithTargetPort(intstr.FromInt32(HubGossipPort)),
			corev1ac.ServicePort().WithName("gossip-udp").WithProtocol(corev1.ProtocolUDP).WithPort(HubGossipPort).WithTargetPort(intstr.FromInt32(HubGossipPort)),
		))
	api := corev1ac.Service(HubName, ns).WithLabels(labels).WithSpec(corev1ac.ServiceSpec().
		WithSelector(sel).
		WithPorts(corev1ac.ServicePort().WithName("https").WithProtocol(corev1.ProtocolTCP).WithPort(HubAPIPort).WithTargetPort(intstr.FromInt32(HubAPIPort))))
	var objs []kube.Object
	for _, o := range []struct {
		obj kube.Object
		err error
	}{
		wrap(kube.Typed(gossip, applyService(ns))),
		wrap(kube.Typed(api, applyService(ns))),
		wrap(kube.Typed(hubStatefulSet(o, ns, replicas, labels, sel), func(ctx context.Context, c *kube.Cluster, ac *appsv1ac.StatefulSetApplyConfiguration) (metav1.Object, error) {
			return c.Kube.AppsV1().StatefulSets(ns).Apply(ctx, ac, c.ApplyOptions())
		})),
	} {
		if o.err != nil {
			return nil, o.err
		}
		objs = append(objs, o.obj)
	}
	return objs, nil
}

func wrap(o kube.Object, err error) struct {
	obj kube.Object
	err error
} {
	return struct {
		obj kube.Object
		err error
	}{o, err}
}

func applyService(ns string) func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
	return func(ctx context.Context, c *kube.Cluster, ac *corev1ac.ServiceApplyConfiguration) (metav1.Object, error) {
		return c.Kube.CoreV1().Services(ns).Apply(ctx, ac, c.ApplyOptions())
	}
}

// HubStateURL is the --state the replicas use.
func HubStateURL(o HubOptions) string {
	q := url.Values{"prefix": {or(o.EtcdPrefix, "/flotilla")}}
	if o.EtcdTLS {
		dir := hubSecretsDir + "/etcd"
		q.Set("cacert", dir+"/ca.crt")
		q.Set("cert", dir+"/tls.crt")
		q.Set("key", dir+"/tls.key")
	}
	return "etcd://" + strings.Join(o.EtcdEndpoints, ",") + "/?" + q.Encode()
}

// HubArgs are the replicas' arguments. $(POD_NAME) and $(POD_IP) are
// expanded by the kubelet from the container's environment.
func HubArgs(o HubOptions, ns string, replicas int32) []string {
	var join []string
	for i := range replicas {
		join = append(join, fmt.Sprintf("%s-%d.%s.%s.svc:%d", HubName, i, HubGossipService, ns, HubGossipPort))
	}
	return []string{
		"server",
		"--state=" + HubStateURL(o),
		"--state-key-file=" + hubSecretsDir + "/state/key",
		"--token-file=" + hubSecretsDir + "/token/token",
		fmt.Sprintf("--listen=0.0.0.0:%d", HubAPIPort),
		fmt.Sprintf("--tls-san=%s.%s.svc", HubName, ns),
		fmt.Sprintf("--gossip=0.0.0.0:%d", HubGossipPort),
		fmt.Sprintf("--gossip-advertise=$(POD_IP):%d", HubGossipPort),
		"--gossip-key-file=" + hubSecretsDir + "/gossip/key",
		"--join=" + strings.Join(join, ","),
		"--name=$(POD_NAME)",
	}
}

func hubStatefulSet(o HubOptions, ns string, replicas int32, labels, sel map[string]string) *appsv1ac.StatefulSetApplyConfiguration {
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("state-key").WithMountPath(hubSecretsDir + "/state").WithReadOnly(true),
		corev1ac.VolumeMount().WithName("gossip-key").WithMountPath(hubSecretsDir + "/gossip").WithReadOnly(true),
		corev1ac.VolumeMount().WithName("token").WithMountPath(hubSecretsDir + "/token").WithReadOnly(true),
	}
	// 0400: the hub refuses key files that others can read.
	secretVol := func(name, secret string) *corev1ac.VolumeApplyConfiguration {
		return corev1ac.Volume().WithName(name).WithSecret(corev1ac.SecretVolumeSource().WithSecretName(secret).WithDefaultMode(0o400))
	}
	vols := []*corev1ac.VolumeApplyConfiguration{
		secretVol("state-key", HubStateKeySecret), secretVol("gossip-key", HubGossipKeySecret), secretVol("token", HubTokenSecret),
	}
	if o.EtcdTLS {
		mounts = append(mounts, corev1ac.VolumeMount().WithName("etcd-tls").WithMountPath(hubSecretsDir+"/etcd").WithReadOnly(true))
		vols = append(vols, secretVol("etcd-tls", HubEtcdTLSSecret))
	}
	probe := func(path string) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithScheme(corev1.URISchemeHTTPS).
			WithPath(path).WithPort(intstr.FromInt32(HubAPIPort)))
	}
	return appsv1ac.StatefulSet(HubName, ns).WithLabels(labels).WithSpec(appsv1ac.StatefulSetSpec().
		WithReplicas(replicas).
		WithServiceName(HubGossipService).
		// Replicas share etcd, not disks: they may start and stop together.
		WithPodManagementPolicy("Parallel").
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(sel)).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(labels).
			WithSpec(corev1ac.PodSpec().
				WithSecurityContext(corev1ac.PodSecurityContext().WithRunAsNonRoot(true).
					WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
				// One replica per node: losing a machine loses one replica.
				WithAffinity(corev1ac.Affinity().WithPodAntiAffinity(corev1ac.PodAntiAffinity().
					WithPreferredDuringSchedulingIgnoredDuringExecution(corev1ac.WeightedPodAffinityTerm().WithWeight(100).
						WithPodAffinityTerm(corev1ac.PodAffinityTerm().WithTopologyKey("kubernetes.io/hostname").
							WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(sel)))))).
				WithContainers(corev1ac.Container().
					WithName("hub").
					WithImage(o.Image).
					WithArgs(HubArgs(o, ns, replicas)...).
					WithEnv(
						corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.name"))),
						corev1ac.EnvVar().WithName("POD_IP").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("status.podIP"))),
					).
					WithPorts(
						corev1ac.ContainerPort().WithName("https").WithContainerPort(HubAPIPort),
						corev1ac.ContainerPort().WithName("gossip-tcp").WithContainerPort(HubGossipPort).WithProtocol(corev1.ProtocolTCP),
						corev1ac.ContainerPort().WithName("gossip-udp").WithContainerPort(HubGossipPort).WithProtocol(corev1.ProtocolUDP),
					).
					WithReadinessProbe(probe("/readyz")).
					WithLivenessProbe(probe("/healthz")).
					WithSecurityContext(corev1ac.SecurityContext().
						WithAllowPrivilegeEscalation(false).WithReadOnlyRootFilesystem(true).
						WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
					WithVolumeMounts(mounts...)).
				WithVolumes(vols...))))
}
