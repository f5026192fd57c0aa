package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeRegistry serves one image, r:v1, whose blob answers are chosen by
// blob (called with the attempt number, from 0).
func fakeRegistry(t *testing.T, blob func(w http.ResponseWriter, attempt int, body []byte) bool) (*httptest.Server, image) {
	t.Helper()
	cfg, layer := []byte(`{"config":{}}`), []byte("layer bytes")
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":%d},"layers":[{"digest":%q,"size":%d}]}`,
		digestOf(cfg), len(cfg), digestOf(layer), len(layer)))
	md := digestOf(m)
	var attempts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2/r/manifests/v1" || p == "/v2/r/manifests/"+md:
			w.Header().Set("Docker-Content-Digest", md)
			_, _ = w.Write(m)
		case p == "/v2/r/blobs/"+digestOf(cfg):
			_, _ = w.Write(cfg)
		case p == "/v2/r/blobs/"+digestOf(layer):
			if blob(w, int(attempts.Add(1)-1), layer) {
				_, _ = w.Write(layer)
			}
		case strings.HasPrefix(p, "/v2/unsigned/"):
			http.Error(w, `{"errors":[{"code":"DENIED"}]}`, http.StatusForbidden)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, image{repo: "r", tag: "v1", digest: md}
}

func testNode(srv *httptest.Server, retries int) *node {
	tr := &http.Transport{}
	return &node{front: strings.TrimPrefix(srv.URL, "http://"), c: &http.Client{Transport: tr}, tr: tr, retries: retries,
		t: &tally{phases: map[string]*counts{}}}
}

func TestPullCountsEveryOutcome(t *testing.T) {
	t.Parallel()
	serve := func(http.ResponseWriter, int, []byte) bool { return true }
	for _, tc := range []struct {
		name    string
		blob    func(w http.ResponseWriter, attempt int, body []byte) bool
		retries int
		want    counts
	}{
		{"served right", serve, 0, counts{Pulls: 1, Requests: 4}},
		{"a layer of other bytes", func(w http.ResponseWriter, _ int, body []byte) bool {
			_, _ = w.Write([]byte(strings.ToUpper(string(body))))
			return false
		}, 0, counts{Failed: 1, OtherFail: 1, Requests: 4}},
		{"a layer cut short", func(w http.ResponseWriter, _ int, body []byte) bool {
			_, _ = w.Write(body[:3])
			return false
		}, 0, counts{Failed: 1, OtherFail: 1, Requests: 4}},
		{"a layer denied", func(w http.ResponseWriter, _ int, _ []byte) bool {
			w.WriteHeader(http.StatusForbidden)
			return false
		}, 3, counts{Failed: 1, Signed403: 1, Requests: 4}},
		{"503 then served, retried", func(w http.ResponseWriter, attempt int, _ []byte) bool {
			if attempt == 0 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusServiceUnavailable)
				return false
			}
			return true
		}, 1, counts{Pulls: 1, Retries: 1, S503: 1, Requests: 5}},
		{"503 not retried", func(w http.ResponseWriter, _ int, _ []byte) bool {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}, 0, counts{Failed: 1, S503: 1, Requests: 4}},
		{"503 without Retry-After", func(w http.ResponseWriter, _ int, _ []byte) bool {
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}, 3, counts{Failed: 1, S503: 1, S503NoRetry: 1, Requests: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, im := fakeRegistry(t, tc.blob)
			if got := testNode(srv, tc.retries).pull(im); got != tc.want {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestUnsignedServedIsCounted(t *testing.T) {
	t.Parallel()
	srv, _ := fakeRegistry(t, func(http.ResponseWriter, int, []byte) bool { return true })
	nd := testNode(srv, 3)
	if got := nd.unsigned("unsigned/x:v1", true); got.Unsigned403 != 1 || got.UnsignedServed != 0 {
		t.Errorf("a denied unsigned manifest: %v", got)
	}
	// r:v1 stands in for unsigned content a proxy wrongly serves.
	if got := nd.unsigned("r:v1", true); got.UnsignedServed != 1 {
		t.Errorf("unsigned content served but not counted: %v", got)
	}
}
