// Package sail is the lab's stand-in for the Sail Operator: for each Sail
// Istio, IstioCNI and ZTunnel resource it installs Istio's own Helm charts, from the
// pinned istio.io/istio module, as Helm releases through the Helm SDK, the
// way the operator does (sail-operator pkg/reconcile, pkg/istiovalues,
// pkg/helm), and reports the outcome on the resource's status.
//
// What it keeps from Sail: the profile merge (Sail's profile files, then the
// resource's values on top), the values it always overrides (revision,
// global.istioNamespace, defaultRevision cleared), the revision and release
// names, the base chart for the default revision in the operator's
// namespace, Helm's ownership checks (never TakeOwnership), client-side
// apply, and the recovery of a failed or stuck release. What it leaves out:
// IstioRevision objects (the Istio resource owns its releases directly),
// image digests, vendor defaults, FIPS and OpenShift TLS values, revision
// tags and pruning of inactive revisions.
package sail

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// DefaultRevision is the revision of an Istio resource named "default".
const DefaultRevision = "default"

// profiles are Sail's profile files (sail-operator resources/<version>/profiles/*.yaml,
// Apache-2.0), reduced to their spec.values. Sail always applies "default"
// first, then the resource's spec.profile. Istio's charts read the profile
// value themselves (zzz_profile.yaml and files/profile-*.yaml).
var profiles = map[string]func() map[string]any{
	"default": func() map[string]any {
		return map[string]any{
			"defaultRevision": "",
			"global":          map[string]any{"istioNamespace": "istio-system", "configValidation": true},
			"ztunnel":         map[string]any{"resourceName": "ztunnel"},
		}
	},
	"ambient":   func() map[string]any { return map[string]any{"profile": "ambient"} },
	"demo":      func() map[string]any { return map[string]any{"profile": "demo"} },
	"empty":     func() map[string]any { return map[string]any{} },
	"openshift": func() map[string]any { return map[string]any{"global": map[string]any{"platform": "openshift"}} },
	"openshift-ambient": func() map[string]any {
		return map[string]any{"profile": "ambient", "global": map[string]any{"platform": "openshift"}}
	},
	"preview": func() map[string]any { return map[string]any{"profile": "preview"} },
	"remote":  func() map[string]any { return map[string]any{"profile": "remote"} },
	"stable":  func() map[string]any { return map[string]any{"profile": "stable"} },
}

// profileValues merges the default profile and the named one, as Sail's
// istiovalues.ApplyProfilesAndPlatform does.
func profileValues(profile string) (map[string]any, error) {
	names := []string{"default"}
	if profile != "" && profile != "default" {
		names = append(names, profile)
	}
	values := map[string]any{}
	for _, n := range names {
		p, ok := profiles[n]
		if !ok {
			return nil, fmt.Errorf("profile %q not found", n)
		}
		values = mergeOverwrite(values, p())
	}
	return values, nil
}

// RevisionName is the active revision of an Istio resource: its name with
// the InPlace update strategy (the default), else name-<version> with the
// version's dots as dashes (sail-operator controllers/istio getActiveRevisionName).
func RevisionName(name, strategy, version string) string {
	if strategy == "RevisionBased" {
		return name + "-" + strings.ReplaceAll(version, ".", "-")
	}
	return name
}

// IstioValues computes the istiod and base charts' values for an Istio
// resource whose active revision is revision: the profiles, the resource's
// values on top, then the values Sail never lets a user set.
func IstioValues(revision, namespace, profile string, user map[string]any) (map[string]any, error) {
	values, err := profileValues(profile)
	if err != nil {
		return nil, err
	}
	values = mergeOverwrite(values, deepCopy(user))
	// Sail's ApplyOverrides: the chart's default revision is "", and
	// values.defaultRevision is deprecated, so Sail drops it: a remote that
	// sets it still renders only its own revision's webhooks.
	rev := revision
	if rev == DefaultRevision {
		rev = ""
	}
	values["revision"] = rev
	global, _ := values["global"].(map[string]any)
	if global == nil {
		global = map[string]any{}
	}
	global["istioNamespace"] = namespace
	values["global"] = global
	delete(values, "defaultRevision")
	return values, nil
}

// CNIValues computes the istio-cni chart's values for an IstioCNI resource.
func CNIValues(profile string, user map[string]any) (map[string]any, error) {
	values, err := profileValues(profile)
	if err != nil {
		return nil, err
	}
	return mergeOverwrite(values, deepCopy(user)), nil
}

// ZTunnelValues computes the ztunnel chart's values for a ZTunnel resource,
// as Sail's ZTunnel controller does: the default profile and ambient (a
// ZTunnel's profile is always ambient), then target, the values Sail copies
// from the Istio resource spec.targetRef names (its global, meshConfig and
// revision), then the resource's values; and last the resource's
// values.ztunnel once more at the top level, since the ztunnel chart reads
// its own settings there (it has no descoping template for ztunnel.*, as
// istio-cni has for cni.*).
func ZTunnelValues(user, target map[string]any) (map[string]any, error) {
	values, err := profileValues("ambient")
	if err != nil {
		return nil, err
	}
	values = mergeOverwrite(values, deepCopy(target))
	values = mergeOverwrite(values, deepCopy(user))
	if zt, ok := user["ztunnel"].(map[string]any); ok {
		values = mergeOverwrite(values, deepCopy(zt))
	}
	return values, nil
}

// ztunnelTarget is what a ZTunnel takes from the Istio resource it
// targets: spec.values.global and meshConfig, and the active revision.
func ztunnelTarget(istio *unstructured.Unstructured) map[string]any {
	out := map[string]any{}
	for _, k := range []string{"global", "meshConfig"} {
		if v, ok, _ := unstructured.NestedMap(istio.Object, "spec", "values", k); ok {
			out[k] = v
		}
	}
	strategy, _, _ := unstructured.NestedString(istio.Object, "spec", "updateStrategy", "type")
	version, _, _ := unstructured.NestedString(istio.Object, "spec", "version")
	rev := RevisionName(istio.GetName(), strategy, version)
	if rev == DefaultRevision {
		rev = ""
	}
	out["revision"] = rev
	return out
}

// mergeOverwrite merges overrides into base key by key where both hold a
// map; anything else in overrides replaces base's value. It returns base.
func mergeOverwrite(base, overrides map[string]any) map[string]any {
	if base == nil {
		base = map[string]any{}
	}
	for k, v := range overrides {
		bm, bok := base[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			base[k] = mergeOverwrite(bm, om)
			continue
		}
		base[k] = v
	}
	return base
}

func deepCopy(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = deepCopyValue(v)
	}
	return out
}

func deepCopyValue(v any) any {
	switch t := v.(type) {
	case map[string]any:
		return deepCopy(t)
	case []any:
		out := make([]any, len(t))
		for i := range t {
			out[i] = deepCopyValue(t[i])
		}
		return out
	default:
		return v
	}
}
