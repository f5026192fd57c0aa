package proxy

import (
	"net/http/httptest"
	"testing"
)

func TestNextLink(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, link, target, want string
	}{
		{"containerd ns", `</v2/library/alpine/tags/list?n=2&last=3.19>; rel="next"`, "/v2/library/alpine/tags/list?ns=docker.io&n=2",
			`</v2/library/alpine/tags/list?last=3.19&n=2&ns=docker.io>; rel="next"`},
		{"alias prefix kept", `</v2/acme/app/tags/list?last=v1&n=1>; rel="next"`, "/v2/ghcr.io/acme/app/tags/list?n=1",
			`</v2/ghcr.io/acme/app/tags/list?last=v1&n=1>; rel="next"`},
		{"absolute upstream URL is reduced to its page", `<https://registry.example/v2/acme/app/tags/list?last=v1>; rel="next"`, "/v2/acme/app/tags/list",
			`</v2/acme/app/tags/list?last=v1>; rel="next"`},
		{"other parameters dropped", `</v2/x/tags/list?last=v1&redirect=https://evil.example>; rel="next"`, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"not next", `</v2/x/tags/list?last=v1>; rel="prev"`, "/v2/x/tags/list", ""},
		{"no page parameters", `</v2/x/tags/list>; rel="next"`, "/v2/x/tags/list", ""},
		{"malformed", `/v2/x/tags/list?last=v1; rel="next"`, "/v2/x/tags/list", ""},
		{"empty", "", "/v2/x/tags/list", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("GET", tc.target, nil)
			if got := nextLink(tc.link, r); got != tc.want {
				t.Errorf("nextLink(%q) = %q, want %q", tc.link, got, tc.want)
			}
		})
	}
}
