package sail

import (
	"reflect"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// status is the part of a Sail resource's status the lab writes: the
// conditions Reconciled and Ready, the state, the active revision and the
// revision counts, in Sail's field names.
type status struct {
	observedGeneration int64
	conditions         []map[string]any
	state              string
	activeRevision     string
	revisionsTotal     int64
	revisionsReady     int64

	orig map[string]any
}

func newStatus(u *unstructured.Unstructured) *status {
	orig, _, _ := unstructured.NestedMap(u.Object, "status")
	st := &status{orig: orig}
	st.observedGeneration, _, _ = unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	st.state, _, _ = unstructured.NestedString(u.Object, "status", "state")
	st.activeRevision, _, _ = unstructured.NestedString(u.Object, "status", "activeRevisionName")
	st.revisionsTotal, _, _ = unstructured.NestedInt64(u.Object, "status", "revisions", "total")
	st.revisionsReady, _, _ = unstructured.NestedInt64(u.Object, "status", "revisions", "ready")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok {
			st.conditions = append(st.conditions, m)
		}
	}
	return st
}

func (s *status) condition(typ string) map[string]any {
	for _, c := range s.conditions {
		if c["type"] == typ {
			return c
		}
	}
	return nil
}

func (s *status) reconciled() bool {
	c := s.condition("Reconciled")
	return c != nil && c["status"] == "True"
}

// set sets a condition, keeping its transition time when the status stays.
func (s *status) set(typ string, ok bool, reason, message string) {
	val := "False"
	if ok {
		val = "True"
	}
	c := s.condition(typ)
	if c == nil {
		c = map[string]any{"type": typ}
		s.conditions = append(s.conditions, c)
	}
	if c["status"] != val {
		c["lastTransitionTime"] = time.Now().UTC().Format(time.RFC3339)
	}
	c["status"], c["reason"] = val, reason
	if message == "" {
		delete(c, "message")
	} else {
		c["message"] = message
	}
}

func (s *status) object() map[string]any {
	conds := make([]any, len(s.conditions))
	for i, c := range s.conditions {
		conds[i] = c
	}
	out := map[string]any{
		"observedGeneration": s.observedGeneration,
		"conditions":         conds,
		"state":              s.state,
	}
	if s.activeRevision != "" {
		out["activeRevisionName"] = s.activeRevision
		out["revisions"] = map[string]any{"total": s.revisionsTotal, "ready": s.revisionsReady, "inUse": int64(0)}
	}
	return out
}

// changed compares with the status as read; both hold JSON-decoded types
// (int64, string, []any, map[string]any), and the reads copied.
func (s *status) changed() bool { return !reflect.DeepEqual(s.orig, s.object()) }
