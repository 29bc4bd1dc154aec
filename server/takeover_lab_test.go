package server

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"github.com/flotillamesh/flotilla/deploy/kube"
	"github.com/flotillamesh/flotilla/federation"
	"github.com/flotillamesh/flotilla/server/spec"
)

// TestApplyLabTakesOverLegacyManager: objects an older flotilla wrote under
// its one field manager are taken over by the subsystem managers on the
// next apply. The mesh is applied, then every object the apply wrote is
// turned into what the older flotilla left: the subsystems' apply entries
// merged into one entry of kube.FieldManager (and a namespace it created). The next apply succeeds
// without a conflict, leaves no entry of kube.FieldManager, keeps every
// field that entry owned with its value and gives it a subsystem owner; the
// apply after it writes nothing.
func TestApplyLabTakesOverLegacyManager(t *testing.T) {
	l := testLab.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, m, ns := isolatedHub(ctx, t, l, "to")
	rec := &applyRecorder{paths: map[string]map[string]bool{}, counter: &requestCounter{n: map[string]int{}}}
	h.Connect = rec.connect
	// An older flotilla created a namespace it needed before applying it
	// (kube.EnsureNamespace): its update entry lists the labels map and the
	// name label the API server adds.
	west := l.Cluster("west").Client()
	if _, err := west.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: kube.ManagedLabels()}},
		metav1.CreateOptions{FieldManager: kube.FieldManager}); err != nil {
		t.Fatal(err)
	}
	apply := func(t *testing.T) {
		t.Helper()
		rep, err := h.Apply(ctx, m, ApplyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
	}
	apply(t)
	got, err := west.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kube.Legacy(got) {
		t.Errorf("west: namespace %s the older flotilla created is not taken over: %v", ns, managerNames(got))
	}

	// What the older flotilla left.
	objects := rec.objects()
	if len(objects) == 0 {
		t.Fatal("the apply wrote nothing")
	}
	type before struct {
		legacy *fieldpath.Set
		values map[string]any
	}
	old := map[objectAt]before{}
	for _, o := range objects {
		c := rec.client(t, o.cluster)
		u := getPath(ctx, t, c, o)
		if _, ok := u.GetLabels()[federation.TokenBindingLabel]; ok {
			continue // a token's binding Secret: no older flotilla wrote one
		}
		entries, merged := asLegacy(t, u.GetManagedFields())
		if merged.Empty() {
			continue // an apply that owns no field (a namespace only made to exist)
		}
		patchManagedFields(ctx, t, c, o, u, entries)
		u = getPath(ctx, t, c, o)
		if !kube.Legacy(u) {
			t.Fatalf("%s: no %s entry after making it legacy", o, kube.FieldManager)
		}
		old[o] = before{legacy: merged, values: projectFields(u.Object, merged)}
	}

	if len(old) == 0 {
		t.Fatal("no object to take over")
	}
	t.Logf("%d objects written as the older flotilla did", len(old))
	apply(t)
	for o, was := range old {
		u := getPath(ctx, t, rec.client(t, o.cluster), o)
		if kube.Legacy(u) {
			t.Errorf("%s: an entry of %s remains: %v", o, kube.FieldManager, managerNames(u))
			continue
		}
		owned := &fieldpath.Set{}
		for _, mf := range u.GetManagedFields() {
			if mf.Subresource == "" && slices.Contains(kube.Managers(), mf.Manager) {
				owned = owned.Union(fieldsOf(t, mf))
				if mf.Operation != metav1.ManagedFieldsOperationApply {
					// The takeover patch changes managedFields only; it claims no field.
					t.Errorf("%s: %s has an %s entry", o, mf.Manager, mf.Operation)
				}
			}
		}
		if orphan := was.legacy.Difference(owned); !orphan.Empty() {
			t.Errorf("%s: fields of the legacy entry no subsystem owns: %s", o, orphan)
		}
		if got := projectFields(u.Object, was.legacy); !reflect.DeepEqual(got, was.values) {
			t.Errorf("%s: the legacy entry's fields changed:\n got %v\nwant %v", o, got, was.values)
		}
	}

	rec.counter.reset()
	apply(t)
	if w := rec.counter.writes(); len(w) != 0 {
		t.Errorf("apply after the takeover made write calls, want none: %v", w)
	}
}

// objectAt is an object by cluster and API path.
type objectAt struct{ cluster, path string }

func (o objectAt) String() string { return o.cluster + ": " + o.path }

// applyRecorder connects like the hub does, counts requests (counter) and
// records the objects each server-side apply writes.
type applyRecorder struct {
	counter *requestCounter
	mu      sync.Mutex
	paths   map[string]map[string]bool
	conns   map[string]*kube.Cluster
}

func (r *applyRecorder) connect(c spec.Cluster, kubeconfig string) (*kube.Cluster, error) {
	kc, err := connectWrapped(c, kubeconfig, func(rt http.RoundTripper) http.RoundTripper {
		return recordingTransport{rt: countingTransport{rt: rt, rc: r.counter, cluster: c.Name}, r: r, cluster: c.Name}
	})
	if err == nil {
		r.mu.Lock()
		if r.conns == nil {
			r.conns = map[string]*kube.Cluster{}
		}
		r.conns[c.Name] = kc
		r.mu.Unlock()
	}
	return kc, err
}

func (r *applyRecorder) client(t *testing.T, cluster string) *kube.Cluster {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.conns[cluster]
	if c == nil {
		t.Fatalf("%s: no connection", cluster)
	}
	return c
}

// objects are the objects written by server-side apply, in a stable order.
func (r *applyRecorder) objects() []objectAt {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []objectAt
	for cluster, paths := range r.paths {
		for p := range paths {
			out = append(out, objectAt{cluster, p})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

type recordingTransport struct {
	rt      http.RoundTripper
	r       *applyRecorder
	cluster string
}

func (t recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Server-side applies of objects, not of their status.
	if req.Method == http.MethodPatch && req.Header.Get("Content-Type") == string(types.ApplyPatchType) && !strings.HasSuffix(req.URL.Path, "/status") {
		t.r.mu.Lock()
		if t.r.paths[t.cluster] == nil {
			t.r.paths[t.cluster] = map[string]bool{}
		}
		t.r.paths[t.cluster][req.URL.Path] = true
		t.r.mu.Unlock()
	}
	return t.rt.RoundTrip(req)
}

func getPath(ctx context.Context, t *testing.T, c *kube.Cluster, o objectAt) *unstructured.Unstructured {
	t.Helper()
	raw, err := c.Kube.CoreV1().RESTClient().Get().AbsPath(o.path).DoRaw(ctx)
	if err != nil {
		t.Fatalf("%s: get: %v", o, err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(raw, &u.Object); err != nil {
		t.Fatalf("%s: %v", o, err)
	}
	return u
}

// asLegacy merges the subsystem managers' apply entries into one apply
// entry of kube.FieldManager, as the older flotilla's single manager would
// own them; it returns the entries and the merged entry's fields.
func asLegacy(t *testing.T, entries []metav1.ManagedFieldsEntry) ([]metav1.ManagedFieldsEntry, *fieldpath.Set) {
	t.Helper()
	merged := &fieldpath.Set{}
	var out []metav1.ManagedFieldsEntry
	var at *metav1.Time
	apiVersion := ""
	for _, mf := range entries {
		if mf.Subresource != "" || !slices.Contains(kube.Managers(), mf.Manager) || mf.Operation != metav1.ManagedFieldsOperationApply {
			out = append(out, mf)
			continue
		}
		merged = merged.Union(fieldsOf(t, mf))
		apiVersion = mf.APIVersion
		if at == nil || (mf.Time != nil && at.Before(mf.Time)) {
			at = mf.Time
		}
	}
	if merged.Empty() {
		return entries, merged
	}
	raw, err := merged.ToJSON()
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, metav1.ManagedFieldsEntry{Manager: kube.FieldManager, Operation: metav1.ManagedFieldsOperationApply,
		APIVersion: apiVersion, Time: at, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: raw}})
	return out, merged
}

func patchManagedFields(ctx context.Context, t *testing.T, c *kube.Cluster, o objectAt, u *unstructured.Unstructured, entries []metav1.ManagedFieldsEntry) {
	t.Helper()
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/resourceVersion", "value": u.GetResourceVersion()},
		{"op": "replace", "path": "/metadata/managedFields", "value": entries},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kube.CoreV1().RESTClient().Patch(types.JSONPatchType).AbsPath(o.path).Body(patch).DoRaw(ctx); err != nil {
		t.Fatalf("%s: make legacy: %v", o, err)
	}
}

func fieldsOf(t *testing.T, mf metav1.ManagedFieldsEntry) *fieldpath.Set {
	t.Helper()
	s := &fieldpath.Set{}
	if mf.FieldsV1 != nil {
		if err := s.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
			t.Fatalf("%s's fields: %v", mf.Manager, err)
		}
	}
	return s
}

func managerNames(u metav1.Object) []string {
	var out []string
	for _, mf := range u.GetManagedFields() {
		out = append(out, mf.Manager+"/"+string(mf.Operation))
	}
	return out
}

// projectFields is the value of every leaf path of s in obj, by path.
func projectFields(obj map[string]any, s *fieldpath.Set) map[string]any {
	out := map[string]any{}
	s.Leaves().Iterate(func(p fieldpath.Path) {
		v, ok := valueAt(obj, p)
		if !ok {
			v = "<absent>"
		}
		out[p.String()] = v
	})
	return out
}

// valueAt follows p through obj: fields by name, list elements by their
// key fields, set elements by value, or by index.
func valueAt(obj any, p fieldpath.Path) (any, bool) {
	cur := obj
	for _, pe := range p {
		switch {
		case pe.FieldName != nil:
			m, ok := cur.(map[string]any)
			if !ok {
				return nil, false
			}
			if cur, ok = m[*pe.FieldName]; !ok {
				return nil, false
			}
		case pe.Key != nil:
			l, _ := cur.([]any)
			found := false
			for _, el := range l {
				m, ok := el.(map[string]any)
				if !ok {
					continue
				}
				match := true
				for _, f := range *pe.Key {
					want, _ := json.Marshal(f.Value.Unstructured())
					got, _ := json.Marshal(m[f.Name])
					match = match && bytes.Equal(want, got)
				}
				if match {
					cur, found = el, true
					break
				}
			}
			if !found {
				return nil, false
			}
		case pe.Value != nil:
			want, _ := json.Marshal((*pe.Value).Unstructured())
			l, _ := cur.([]any)
			found := false
			for _, el := range l {
				if got, _ := json.Marshal(el); bytes.Equal(want, got) {
					cur, found = el, true
					break
				}
			}
			if !found {
				return nil, false
			}
		case pe.Index != nil:
			l, _ := cur.([]any)
			if *pe.Index >= len(l) {
				return nil, false
			}
			cur = l[*pe.Index]
		}
	}
	return cur, true
}
