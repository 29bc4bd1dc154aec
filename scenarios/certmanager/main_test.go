package main

import (
	"slices"
	"strings"
	"testing"
)

func TestSelectControllers(t *testing.T) {
	without := func(name string) []string {
		return slices.DeleteFunc(slices.Clone(defaultControllers), func(c string) bool { return c == name })
	}
	for _, tc := range []struct {
		flag    string
		want    []string
		wantErr string
	}{
		{flag: "*", want: defaultControllers},
		{flag: "*,-certificaterequests-approver", want: without("certificaterequests-approver")},
		{flag: " * , -certificaterequests-approver ", want: without("certificaterequests-approver")},
		{flag: "issuers,certificates-trigger", want: []string{"issuers", "certificates-trigger"}},
		{flag: "*,-no-such-controller", wantErr: "not one of the default controllers"},
		{flag: "-issuers", wantErr: "selects no controller"},
		{flag: "", wantErr: "selects no controller"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			got, err := selectControllers(tc.flag)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
