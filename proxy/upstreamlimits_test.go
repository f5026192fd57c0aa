package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
)

// failingTransport answers the /v2/ ping and fails every other request
// with err, as the upstream client's dial guard, idle timer and
// connection cap do.
type failingTransport struct {
	inner http.RoundTripper
	err   error
}

func (f failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v2/" {
		return f.inner.RoundTrip(r)
	}
	return nil, f.err
}

// TestUpstreamLimitAnswers maps each upstream limit to the client's answer
// and the operator's metric: a refused redirect and a stall are the
// upstream's fault (502), a connection cap is load (503, retry). None of
// them is a 404 or a verdict.
func TestUpstreamLimitAnswers(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	for _, tc := range []struct {
		err    error
		status int
		kind   string
		msg    string
	}{
		{&upstream.RedirectRefusedError{Host: "metadata.internal", Addr: netip.MustParseAddr("169.254.169.254"), Class: "link-local"},
			http.StatusBadGateway, "redirect_refused", "redirected to a disallowed address 169.254.169.254"},
		{upstream.ErrUpstreamStalled, http.StatusBadGateway, "upstream_stalled", "stopped sending"},
		{upstream.ErrConnLimit, http.StatusServiceUnavailable, "conn_limit", "are busy, retry later"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			p2, err := New([]Upstream{{Name: "docker.io", URL: reg.srv.URL, Insecure: true}}, allowAll(),
				WithTransport(failingTransport{inner: newSpy(), err: tc.err}))
			if err != nil {
				t.Fatal(err)
			}
			w := do(p2, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io")
			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.msg) {
				t.Fatalf("answer = %d %s, want %d with %q", w.Code, w.Body, tc.status, tc.msg)
			}
			if got := counterValue(t, p2, "portcullis_upstream_errors_total", map[string]string{"kind": tc.kind}); got != 1 {
				t.Errorf("upstream_errors{kind=%s} = %v, want 1", tc.kind, got)
			}
		})
	}
}
