package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/flotillamesh/flotilla/server"
)

func TestVerifyCommandFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"zero requests", []string{"--requests", "0"}, "--requests 0"},
		{"too many requests", []string{"--requests", "5000"}, "--requests 5000"},
		{"bad output", []string{"-o", "yaml"}, "yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &globals{}
			c := newVerifyCommand(g)
			c.SetArgs(tc.args)
			c.SetOut(&bytes.Buffer{})
			c.SetErr(&bytes.Buffer{})
			err := c.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestPrintVerify(t *testing.T) {
	r := &server.VerifyResult{
		Versions: []string{"v1", "v2"},
		Clients: []server.VerifyClient{
			{Cluster: "east", Pod: "curl-1", Requests: 4, Answers: map[string]int{"v1": 4}, Failures: 0, Missing: []string{"v2"}},
			{Cluster: "west", Pod: "curl-2", Requests: 4, Answers: map[string]int{"v1": 2, "v2": 2}},
		},
		Diagnosis: []server.Check{{Name: "remote secrets authenticate", Cluster: "east", Message: "secret missing", Hint: "run flotilla apply"}},
	}
	for _, tc := range []struct {
		output string
		want   []string
	}{
		{"table", []string{"CLIENT  POD     V1  V2  FAILED  RESULT", "east    curl-1  4   0   0       missing v2", "west    curl-2  2   2   0       ok", "remote secrets authenticate [east]: secret missing", "fix: run flotilla apply"}},
		{"json", []string{`"versions": [`, `"missing": [`, `"diagnosis": [`}},
	} {
		var b bytes.Buffer
		if err := printVerify(&b, r, tc.output); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s output lacks %q:\n%s", tc.output, w, b.String())
			}
		}
		if tc.output == "json" {
			var back server.VerifyResult
			if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.Clients[0].Answers["v1"] != 4 {
				t.Errorf("json does not round-trip: %v %+v", err, back)
			}
		}
	}
}
