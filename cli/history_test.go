package cli_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/cli"
	"github.com/flotillamesh/flotilla/server/state"
)

// TestHistory: flotilla history lists people's applies apart from the
// reconcile loop's runs, newest first.
func TestHistory(t *testing.T) {
	c := newCorpus(t)
	k, err := state.ReadKeyFile(c.key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(context.Background(), c.state, state.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)
	err = st.Update(context.Background(), func(tx *state.Tx) error {
		for i, r := range []state.ApplyRecord{
			{Kind: state.KindApply, Source: "cli", Result: "succeeded"},
			{Kind: state.KindReconcile, Source: "reconcile", Result: "succeeded"},
			{Kind: state.KindReconcile, Source: "reconcile", Result: "failed"},
			{Kind: state.KindApply, Source: "api", Result: "succeeded"},
		} {
			r.Start, r.End = start.Add(time.Duration(i)*time.Minute), start.Add(time.Duration(i)*time.Minute+time.Second)
			if _, err := tx.AppendApply(r); err != nil {
				return err
			}
		}
		return nil
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		root := cli.NewRoot(cli.BuildInfo{})
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"--state", c.state, "--state-key-file", c.key, "history"}, args...))
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	ids := func(out string) string {
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			got = append(got, strings.Fields(line)[0])
		}
		return strings.Join(got, " ")
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"applies by default", nil, "4 1"},
		{"reconcile runs", []string{"--kind", "reconcile"}, "3 2"},
		{"all", []string{"--kind", "all"}, "4 3 2 1"},
		{"limit", []string{"--kind", "all", "-n", "1"}, "4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(out); got != tc.want {
				t.Fatalf("ids %q, want %q:\n%s", got, tc.want, out)
			}
		})
	}
	if _, err := run("--kind", "people"); err == nil || !strings.Contains(err.Error(), `kind="people"`) {
		t.Errorf("--kind people: %v", err)
	}
	out, err := run("-o", "json")
	if err != nil || !strings.Contains(out, `"source": "api"`) || strings.Contains(out, `"reconcile"`) {
		t.Errorf("-o json: %v\n%s", err, out)
	}
}
