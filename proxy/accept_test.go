package proxy

import (
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// The Accept list a tag is resolved with (and its tag cache is keyed on)
// is the client's Accept headers in order, split on commas and trimmed,
// with empty entries and entries over 256 bytes left out and at most
// maxAcceptEntries kept: a client cannot make the proxy send or key on an
// unbounded list.
func TestAcceptList(t *testing.T) {
	t.Parallel()
	long := "application/" + strings.Repeat("x", 256-len("application/"))
	var many []string
	for i := range maxAcceptEntries + 5 {
		many = append(many, fmt.Sprintf("application/t%d", i))
	}
	tests := []struct {
		name    string
		headers []string
		want    []string
	}{
		{"none", nil, nil},
		{"containerd's", []string{strings.Join(containerdAccept, ", ")}, containerdAccept},
		{"over several headers, empty entries left out", []string{"a/b, ,c/d", "", "e/f,"}, []string{"a/b", "c/d", "e/f"}},
		{"256 bytes kept, 257 left out", []string{long + "," + long + "x" + ",a/b"}, []string{long, "a/b"}},
		{"at most maxAcceptEntries", []string{strings.Join(many[:10], ","), strings.Join(many[10:], ",")}, many[:maxAcceptEntries]},
	}
	for _, tc := range tests {
		r := httptest.NewRequest("GET", "/v2/", nil)
		for _, h := range tc.headers {
			r.Header.Add("Accept", h)
		}
		if got := acceptList(r); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
