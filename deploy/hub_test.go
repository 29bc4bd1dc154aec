package deploy

import (
	"slices"
	"strings"
	"testing"
)

func TestHubObjects(t *testing.T) {
	objs, err := HubObjects(HubOptions{Image: "flotilla:test", EtcdEndpoints: []string{"etcd-0:2379", "etcd-1:2379"}, EtcdTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Unstructured().GetKind()+"/"+o.Unstructured().GetName())
	}
	want := []string{"Service/flotilla-hub-gossip", "Service/flotilla-hub", "StatefulSet/flotilla-hub"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("objects %v, want %v", kinds, want)
	}
	gossip := objs[0].Unstructured().Object["spec"].(map[string]any)
	if gossip["clusterIP"] != "None" || gossip["publishNotReadyAddresses"] != true {
		t.Errorf("gossip Service is not headless with not-ready addresses: %v", gossip)
	}
	joined := strings.Join(containerArgs(objs[2].Unstructured().Object), " ")
	for _, f := range []string{
		"--state=etcd://etcd-0:2379,etcd-1:2379/?", "cacert=%2Fvar%2Frun%2Fsecrets%2Fflotilla%2Fetcd%2Fca.crt",
		"--gossip=0.0.0.0:7946", "--gossip-advertise=$(POD_IP):7946", "--gossip-key-file=",
		"--join=flotilla-hub-0.flotilla-hub-gossip.flotilla-system.svc:7946,flotilla-hub-1.", "flotilla-hub-2.flotilla-hub-gossip",
		"--name=$(POD_NAME)", "--state-key-file=",
	} {
		if !strings.Contains(joined, f) {
			t.Errorf("statefulset args %q lack %s", joined, f)
		}
	}
	for _, tc := range []struct {
		name string
		o    HubOptions
	}{
		{"no image", HubOptions{EtcdEndpoints: []string{"e:2379"}}},
		{"no etcd", HubOptions{Image: "flotilla:test"}},
	} {
		if _, err := HubObjects(tc.o); err == nil {
			t.Errorf("%s: rendered", tc.name)
		}
	}
}

// containerArgs reads the first container's args of a Deployment or StatefulSet.
func containerArgs(obj map[string]any) []string {
	spec := obj["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	var out []string
	for _, a := range spec["containers"].([]any)[0].(map[string]any)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}
