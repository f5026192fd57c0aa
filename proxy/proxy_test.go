package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
)

type ociError struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Detail  map[string]any `json:"detail"`
}

// decodeError checks the envelope and returns its first error.
func decodeError(t *testing.T, body []byte) ociError {
	t.Helper()
	var env struct {
		Errors []ociError `json:"errors"`
	}
	if err := json.Unmarshal(body, &env); err != nil || len(env.Errors) == 0 {
		t.Fatalf("not an OCI error envelope: %q (%v)", body, err)
	}
	return env.Errors[0]
}

func TestNewRefusesUnsafeConfig(t *testing.T) {
	t.Parallel()
	good := Upstream{Name: "docker.io", URL: "https://registry-1.docker.io", Aliases: []string{"index.docker.io"}}
	tests := []struct {
		name string
		ups  []Upstream
		v    Verifier
		opts []Option
	}{
		{"no upstreams", nil, allowAll(), nil},
		{"nil verifier", []Upstream{good}, nil, nil},
		{"duplicate name", []Upstream{good, {Name: "docker.io", URL: "https://x.example"}}, allowAll(), nil},
		{"duplicate alias", []Upstream{good, {Name: "mirror", URL: "https://x.example", Aliases: []string{"index.docker.io"}}}, allowAll(), nil},
		{"alias equal to other name", []Upstream{good, {Name: "mirror", URL: "https://x.example", Aliases: []string{"docker.io"}}}, allowAll(), nil},
		{"unknown default", []Upstream{good}, allowAll(), []Option{WithDefaultUpstream("ghcr.io")}},
		{"plain http without insecure", []Upstream{{Name: "local", URL: "http://127.0.0.1:5000"}}, allowAll(), nil},
		{"bad verify timeout", []Upstream{good}, allowAll(), []Option{WithVerifyTimeout(0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := New(tc.ups, tc.v, tc.opts...); err == nil {
				t.Fatal("New accepted an invalid configuration")
			}
		})
	}
}

func TestBase(t *testing.T) {
	t.Parallel()
	p, s := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	w := do(p, http.MethodGet, "/v2/")
	if w.Code != http.StatusOK || w.Body.String() != "{}" {
		t.Fatalf("GET /v2/ = %d %q", w.Code, w.Body)
	}
	if got := w.Header().Get("Docker-Distribution-API-Version"); got != "registry/2.0" {
		t.Errorf("API version header = %q", got)
	}
	if s.count() != 0 {
		t.Errorf("GET /v2/ reached the upstream: %v", s.since(0))
	}
}

// TestContainerdFlow follows containerd with hosts.toml: HEAD by tag with
// ?ns=, GET by digest, then blobs.
func TestContainerdFlow(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "library/alpine", "latest")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())

	w := do(p, http.MethodHead, "/v2/library/alpine/manifests/latest?ns=docker.io", acceptHeaders(containerdAccept)...)
	if w.Code != http.StatusOK {
		t.Fatalf("HEAD by tag = %d %s", w.Code, w.Body)
	}
	if w.Body.Len() != 0 {
		t.Errorf("HEAD wrote a body of %d bytes", w.Body.Len())
	}
	checkManifestHeaders(t, w, img)

	w = do(p, http.MethodGet, "/v2/library/alpine/manifests/"+img.digest.String()+"?ns=docker.io", acceptHeaders(containerdAccept)...)
	if w.Code != http.StatusOK {
		t.Fatalf("GET by digest = %d %s", w.Code, w.Body)
	}
	if !bytes.Equal(w.Body.Bytes(), img.raw) {
		t.Fatal("served manifest differs from the upstream's bytes")
	}
	checkManifestHeaders(t, w, img)

	for _, b := range append(img.layers, img.config) {
		w = do(p, http.MethodGet, "/v2/library/alpine/blobs/"+b.String()+"?ns=docker.io")
		if w.Code != http.StatusOK {
			t.Fatalf("GET blob %s = %d %s", b, w.Code, w.Body)
		}
		if !digestMatches(b, w.Body.Bytes()) {
			t.Errorf("blob %s: served bytes do not hash to the digest", b)
		}
		if got := w.Header().Get("Docker-Content-Digest"); got != b.String() {
			t.Errorf("blob Docker-Content-Digest = %q", got)
		}
	}
}

func checkManifestHeaders(t *testing.T, w interface{ Header() http.Header }, img pushed) {
	t.Helper()
	h := w.Header()
	if got := h.Get("Docker-Content-Digest"); got != img.digest.String() {
		t.Errorf("Docker-Content-Digest = %q, want %s", got, img.digest)
	}
	if got := h.Get("Content-Type"); got != img.mt {
		t.Errorf("Content-Type = %q, want %q", got, img.mt)
	}
	if got := h.Get("Content-Length"); got != strconv.Itoa(len(img.raw)) {
		t.Errorf("Content-Length = %q, want %d", got, len(img.raw))
	}
}

// TestRouting covers the CRI-O path prefix, the default upstream and the
// Docker Hub library/ convention.
func TestRouting(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	alpine := reg.pushImage(t, "library/alpine", "3")
	org := reg.pushImage(t, "acme/app", "v1")
	longest := "acme/" + strings.Repeat("a", maxNameLength-len("acme/"))
	long := reg.pushImage(t, longest, "v1")
	tests := []struct {
		name   string
		target string
		opts   []Option
		want   pushed
	}{
		{"name as long as allowed", "/v2/" + longest + "/manifests/v1?ns=docker.io", nil, long},
		{"path prefix alias", "/v2/index.docker.io/library/alpine/manifests/3", nil, alpine},
		{"path prefix name", "/v2/docker.io/acme/app/manifests/v1", nil, org},
		{"path prefix implies library", "/v2/docker.io/alpine/manifests/3", nil, alpine},
		{"ns implies library", "/v2/alpine/manifests/3?ns=index.docker.io", nil, alpine},
		{"default upstream", "/v2/acme/app/manifests/v1", []Option{WithDefaultUpstream("docker.io")}, org},
		{"default upstream implies library", "/v2/alpine/manifests/3", []Option{WithDefaultUpstream("docker.io")}, alpine},
		{"other upstream keeps name", "/v2/ghcr.io/acme/app/manifests/v1", nil, org},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, _ := newTestProxy(t, reg.srv.URL, allowAll(), tc.opts...)
			w := do(p, http.MethodGet, tc.target)
			if w.Code != http.StatusOK {
				t.Fatalf("GET %s = %d %s", tc.target, w.Code, w.Body)
			}
			if !bytes.Equal(w.Body.Bytes(), tc.want.raw) {
				t.Fatal("served manifest differs from the upstream's bytes")
			}
		})
	}
}

func TestBadRequestsNeverReachUpstream(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	sha := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		name   string
		method string
		target string
		status int
		code   string
		msg    string
	}{
		{"dot dot", "GET", "/v2/library/../alpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"escaped dot dot", "GET", "/v2/library/%2e%2e/alpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"escaped dot dot upper", "GET", "/v2/library/%2E%2E/alpine/manifests/latest", 400, CodeNameInvalid, ""},
		{"escaped slash", "GET", "/v2/library%2falpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"double slash", "GET", "/v2/library//alpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"upper case", "GET", "/v2/Library/alpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"bad component", "GET", "/v2/library/-alpine/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"too long", "GET", "/v2/" + strings.Repeat("a/", 128) + "b/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"one byte too long", "GET", "/v2/acme/" + strings.Repeat("a", maxNameLength-len("acme/")+1) + "/manifests/latest?ns=docker.io", 400, CodeNameInvalid, ""},
		{"host port not first", "GET", "/v2/acme/localhost:5000/app/manifests/latest", 400, CodeNameInvalid, ""},
		{"unknown ns", "GET", "/v2/library/alpine/manifests/latest?ns=evil.example", 404, CodeNameUnknown,
			`unknown registry "evil.example": configured upstreams: docker.io (aliases docker.io, index.docker.io), ghcr.io`},
		{"unknown alias", "GET", "/v2/evil.example/library/alpine/manifests/latest", 404, CodeNameUnknown, `unknown registry "evil.example"`},
		{"unknown host port", "GET", "/v2/evil.example:443/x/manifests/latest", 404, CodeNameUnknown, `unknown registry "evil.example:443"`},
		{"unknown ns blob", "GET", "/v2/x/blobs/" + sha + "?ns=127.0.0.1", 404, CodeNameUnknown, ""},
		{"no default", "GET", "/v2/alpine/manifests/latest", 404, CodeNameUnknown, "no default upstream"},
		{"unsupported digest algorithm", "GET", "/v2/x/manifests/md5:" + strings.Repeat("a", 32) + "?ns=docker.io", 400, CodeDigestInvalid, "unsupported digest algorithm"},
		{"unsupported blob algorithm", "GET", "/v2/x/blobs/sha1:" + strings.Repeat("a", 40) + "?ns=docker.io", 400, CodeDigestInvalid, "unsupported digest algorithm"},
		{"short digest", "GET", "/v2/x/manifests/sha256:abc?ns=docker.io", 400, CodeDigestInvalid, "invalid digest"},
		{"upper hex digest", "GET", "/v2/x/blobs/sha256:" + strings.Repeat("A", 64) + "?ns=docker.io", 400, CodeDigestInvalid, ""},
		{"blob by tag", "GET", "/v2/x/blobs/latest?ns=docker.io", 400, CodeDigestInvalid, ""},
		{"referrers by tag", "GET", "/v2/x/referrers/latest?ns=docker.io", 400, CodeDigestInvalid, ""},
		{"bad tag", "GET", "/v2/x/manifests/-latest?ns=docker.io", 404, CodeManifestUnknown, "invalid tag"},
		{"long tag", "GET", "/v2/x/manifests/" + strings.Repeat("t", 129) + "?ns=docker.io", 404, CodeManifestUnknown, "invalid tag"},
		{"unknown path", "GET", "/v2/x/uploads/abc?ns=docker.io", 404, CodeNameUnknown, ""},
		{"not v2", "GET", "/v1/x/manifests/latest", 404, CodeNameUnknown, ""},
		{"put manifest", "PUT", "/v2/x/manifests/latest?ns=docker.io", 405, CodeUnsupported, ""},
		{"delete manifest", "DELETE", "/v2/x/manifests/" + sha + "?ns=docker.io", 405, CodeUnsupported, ""},
		{"post upload", "POST", "/v2/x/blobs/uploads/?ns=docker.io", 405, CodeUnsupported, ""},
		{"patch upload", "PATCH", "/v2/x/blobs/uploads/abc?ns=docker.io", 405, CodeUnsupported, ""},
		{"delete blob", "DELETE", "/v2/x/blobs/" + sha + "?ns=docker.io", 405, CodeUnsupported, ""},
		{"head referrers", "HEAD", "/v2/x/referrers/" + sha + "?ns=docker.io", 405, CodeUnsupported, ""},
		{"options", "OPTIONS", "/v2/", 405, CodeUnsupported, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, s := newTestProxy(t, reg.srv.URL, allowAll())
			w := do(p, tc.method, tc.target)
			if w.Code != tc.status {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.target, w.Code, w.Body, tc.status)
			}
			if tc.method != http.MethodHead {
				e := decodeError(t, w.Body.Bytes())
				if e.Code != tc.code {
					t.Errorf("code = %s, want %s", e.Code, tc.code)
				}
				if !strings.Contains(e.Message, tc.msg) {
					t.Errorf("message %q does not contain %q", e.Message, tc.msg)
				}
			}
			if got := w.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("error Content-Type = %q", got)
			}
			if n := s.count(); n != 0 {
				t.Errorf("%d upstream requests for a refused request: %v", n, s.since(0))
			}
		})
	}
}

func TestUpstreamAnswers(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "library/alpine", "latest")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	missing := "sha256:" + strings.Repeat("b", 64)
	tests := []struct {
		name   string
		target string
		status int
		code   string
	}{
		{"unknown tag", "/v2/library/alpine/manifests/nope?ns=docker.io", 404, "MANIFEST_UNKNOWN"},
		{"unknown digest", "/v2/library/alpine/manifests/" + missing + "?ns=docker.io", 404, "MANIFEST_UNKNOWN"},
		{"unknown tags", "/v2/library/nothing/tags/list?ns=docker.io", 404, "NAME_UNKNOWN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := do(p, http.MethodGet, tc.target)
			if w.Code != tc.status {
				t.Fatalf("GET %s = %d %s", tc.target, w.Code, w.Body)
			}
			if e := decodeError(t, w.Body.Bytes()); e.Code != tc.code {
				t.Errorf("code = %s, want %s", e.Code, tc.code)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
		code   string
		leak   string
	}{
		{"proxy error", errorf(http.StatusForbidden, CodeDenied, "no"), 403, CodeDenied, ""},
		{"internal error", errors.New("dial tcp 10.0.0.1: secret internals"), 500, CodeUnknown, "secret"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := do(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeError(w, r, tc.err) }), "GET", "/")
			if w.Code != tc.status {
				t.Fatalf("status = %d", w.Code)
			}
			e := decodeError(t, w.Body.Bytes())
			if e.Code != tc.code {
				t.Errorf("code = %s", e.Code)
			}
			if tc.leak != "" && strings.Contains(w.Body.String(), tc.leak) {
				t.Errorf("internal detail leaked: %s", w.Body)
			}
		})
	}
}

func TestValidEnvelope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body string
		ok   bool
	}{
		{`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}`, true},
		{`{"errors":[{"code":"DENIED","message":"x","detail":{"a":1}}]}`, true},
		{`{"errors":[]}`, false},
		{`{"errors":[{"code":"<script>","message":"x"}]}`, false},
		{`{"errors":[{"code":"X"}],"extra":1}`, false},
		{`{"errors":[{"code":"X"}]} trailing`, false},
		{`<html>`, false},
		{``, false},
	}
	for _, tc := range tests {
		if got := validEnvelope([]byte(tc.body)); got != tc.ok {
			t.Errorf("validEnvelope(%q) = %v, want %v", tc.body, got, tc.ok)
		}
	}
}

func TestPassThrough(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	reg.pushImage(t, "acme/app", "v2")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())

	w := do(p, http.MethodGet, "/v2/acme/app/tags/list?ns=docker.io&n=1")
	if w.Code != http.StatusOK {
		t.Fatalf("tags/list = %d %s", w.Code, w.Body)
	}
	var tags struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &tags); err != nil {
		t.Fatal(err)
	}
	if len(tags.Tags) != 1 || tags.Tags[0] != "v1" {
		t.Errorf("tags with n=1 = %v, want [v1]", tags.Tags)
	}

	w = do(p, http.MethodGet, "/v2/acme/app/referrers/"+img.digest.String()+"?ns=docker.io&artifactType=application/x")
	if w.Code != http.StatusOK {
		t.Fatalf("referrers = %d %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("referrers Content-Type = %q", ct)
	}
	var idx struct {
		SchemaVersion int `json:"schemaVersion"`
	}
	if err := json.NewDecoder(io.LimitReader(w.Body, 1<<20)).Decode(&idx); err != nil || idx.SchemaVersion != 2 {
		t.Errorf("referrers body is not an index: %v", err)
	}
}

func TestWarnModeServes(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, denyAll(verify.ModeWarn))
	w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io")
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), img.raw) {
		t.Fatalf("warn mode: GET = %d", w.Code)
	}
	d := p.decisions.list()
	if len(d) != 1 || d[0].Decision != "warn" || len(d[0].Reasons) == 0 {
		t.Fatalf("decisions = %+v, want one warn with reasons", d)
	}
	// Warn mode still gates blobs through the served manifest.
	if w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+img.layers[0].String()+"?ns=docker.io"); w.Code != http.StatusOK {
		t.Errorf("blob of a warn-served manifest = %d", w.Code)
	}
}
