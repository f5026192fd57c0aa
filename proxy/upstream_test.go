package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeUpstream answers the registry ping and hands everything else to h.
func fakeUpstream(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

const ociManifestType = "application/vnd.oci.image.manifest.v1+json"

func testManifest(seed string) []byte {
	cfg := sha([]byte("config" + seed))
	layer := sha([]byte("layer" + seed))
	return []byte(`{"schemaVersion":2,"mediaType":"` + ociManifestType + `",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfg.String() + `","size":10},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"` + layer.String() + `","size":10}]}`)
}

// serveManifest writes m the way a registry does.
func serveManifest(w http.ResponseWriter, r *http.Request, m []byte, digest v1.Hash) {
	w.Header().Set("Content-Type", ociManifestType)
	w.Header().Set("Docker-Content-Digest", digest.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(m)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(m)
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	a, b := testManifest("a"), testManifest("b")
	da := sha(a)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	tests := []struct {
		name    string
		h       http.HandlerFunc // nil: use url
		url     string
		target  string
		status  int
		code    string
		noBytes []byte // must not appear in the answer
	}{
		{
			name: "401 passed on",
			h: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.example/token"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 401, code: "UNAUTHORIZED",
		},
		{
			name: "403 without envelope",
			h: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusForbidden)
				_, _ = w.Write([]byte("<html>forbidden</html>"))
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 403, code: "DENIED",
		},
		{
			name: "404 without envelope",
			h: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "nope", http.StatusNotFound)
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 404, code: "MANIFEST_UNKNOWN",
		},
		{
			name: "5xx while resolving",
			h: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "boom", http.StatusServiceUnavailable)
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 502, code: "UNKNOWN",
		},
		{
			name: "timeout while resolving",
			h: func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 502, code: "UNKNOWN",
		},
		{
			name: "connection refused", url: closedURL,
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 502, code: "UNKNOWN",
		},
		{
			name: "5xx fetching a digest fails closed",
			h: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "boom", http.StatusInternalServerError)
			},
			target: "/v2/acme/app/manifests/" + da.String() + "?ns=docker.io", status: 403, code: "DENIED",
		},
		{
			name: "wrong bytes for a digest",
			h: func(w http.ResponseWriter, r *http.Request) {
				serveManifest(w, r, b, da)
			},
			target: "/v2/acme/app/manifests/" + da.String() + "?ns=docker.io", status: 403, code: "DENIED", noBytes: b,
		},
		{
			name: "wrong bytes without digest header",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ociManifestType)
				_, _ = w.Write(b)
			},
			target: "/v2/acme/app/manifests/" + da.String() + "?ns=docker.io", status: 403, code: "DENIED", noBytes: b,
		},
		{
			// The tag moved between HEAD and GET: the digest resolved is
			// A, the bytes fetched for A are B's.
			name: "tag swapped between resolve and fetch",
			h: func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodHead && strings.HasSuffix(r.URL.Path, "/manifests/v1"):
					serveManifest(w, r, a, da)
				case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+da.String()):
					serveManifest(w, r, b, sha(b))
				default:
					http.NotFound(w, r)
				}
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 403, code: "DENIED", noBytes: b,
		},
		{
			name: "oversized manifest by digest",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ociManifestType)
				_, _ = w.Write(bytes.Repeat([]byte(" "), 4<<20+1))
			},
			target: "/v2/acme/app/manifests/" + da.String() + "?ns=docker.io", status: 403, code: "DENIED",
		},
		{
			name: "oversized manifest by tag",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ociManifestType)
				w.Header().Set("Content-Length", strconv.Itoa(4<<20+1))
				w.Header().Set("Docker-Content-Digest", da.String())
				if r.Method == http.MethodGet {
					_, _ = w.Write(bytes.Repeat([]byte(" "), 4<<20+1))
				}
			},
			target: "/v2/acme/app/manifests/v1?ns=docker.io", status: 502, code: "UNKNOWN",
		},
		{
			name: "blob 5xx",
			h: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "boom", http.StatusBadGateway)
			},
			target: "/v2/acme/app/blobs/" + da.String() + "?ns=docker.io", status: 502, code: "UNKNOWN",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := tc.url
			if tc.h != nil {
				url = fakeUpstream(t, tc.h).URL
			}
			s := newSpy()
			p, err := New([]Upstream{{Name: "docker.io", URL: url, Insecure: true, Timeout: 500 * time.Millisecond}},
				allowAll(), WithTransport(s), WithBlobGating(false))
			if err != nil {
				t.Fatal(err)
			}
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				w := do(p, method, tc.target)
				if w.Code != tc.status {
					t.Fatalf("%s %s = %d %s, want %d", method, tc.target, w.Code, w.Body, tc.status)
				}
				if w.Header().Get("WWW-Authenticate") != "" {
					t.Error("upstream WWW-Authenticate passed to the client")
				}
				if w.Header().Get("Docker-Content-Digest") != "" {
					t.Error("refused answer carries Docker-Content-Digest")
				}
				if method == http.MethodHead {
					continue
				}
				if e := decodeError(t, w.Body.Bytes()); e.Code != tc.code {
					t.Errorf("code = %s, want %s (%s)", e.Code, tc.code, e.Message)
				}
				if tc.noBytes != nil && bytes.Contains(w.Body.Bytes(), tc.noBytes) {
					t.Error("mismatched manifest bytes were served")
				}
			}
		})
	}
}
