package upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// seen is one request as a test server received it.
type seen struct {
	Method string
	Path   string
	Query  string
	Header http.Header
}

type journal struct {
	mu   sync.Mutex
	reqs []seen
}

func (j *journal) record(r *http.Request) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.reqs = append(j.reqs, seen{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()})
}

func (j *journal) all() []seen {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]seen(nil), j.reqs...)
}

func (j *journal) count(method, pathContains string) int {
	n := 0
	for _, r := range j.all() {
		if r.Method == method && strings.Contains(r.Path, pathContains) {
			n++
		}
	}
	return n
}

// spy is a base RoundTripper that records what leaves the client.
type spy struct {
	journal
	inner http.RoundTripper
}

func (s *spy) RoundTrip(r *http.Request) (*http.Response, error) {
	s.record(r)
	return s.inner.RoundTrip(r)
}

func newSpy() *spy { return &spy{inner: testTransport} }

// staticKeychain hands out one set of credentials for every registry.
type staticKeychain struct{ cfg authn.AuthConfig }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(k.cfg), nil
}

const (
	testUser     = "puller"
	testPassword = "s3cret-password"
	testToken    = "tok-0123456789"
)

type authMode int

const (
	authNone authMode = iota
	authBasic
	authBearer
)

// fakeUpstream is the in-memory registry behind optional basic or bearer
// auth and an optional blob redirect, recording every request.
type fakeUpstream struct {
	*httptest.Server
	journal
	mode authMode
	// redirectBlobs, when set, answers blob requests with a 307 to this
	// base URL + "/storage/<digest>".
	redirectBlobs string
	reg           http.Handler
	tokenScopes   []string
	mu            sync.Mutex
}

func newFakeUpstream(t *testing.T, mode authMode) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{
		mode: mode,
		reg:  registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)),
	}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeUpstream) host() string { return strings.TrimPrefix(f.URL, "http://") }

func (f *fakeUpstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Test-Seed") == "" {
		f.record(r)
	}
	if r.URL.Path == "/token" {
		f.serveToken(w, r)
		return
	}
	// Seeding bypasses auth through a marker header only the tests set.
	if r.Header.Get("X-Test-Seed") == "" {
		switch f.mode {
		case authBasic:
			u, p, ok := r.BasicAuth()
			if !ok || u != testUser || p != testPassword {
				w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		case authBearer:
			if r.Header.Get("Authorization") != "Bearer "+testToken {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake"`, f.URL))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
	}
	if f.redirectBlobs != "" && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		http.Redirect(w, r, f.redirectBlobs+"/storage/"+d, http.StatusTemporaryRedirect)
		return
	}
	f.reg.ServeHTTP(w, r)
}

func (f *fakeUpstream) serveToken(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || u != testUser || p != testPassword {
		http.Error(w, `{"details":"bad credentials"}`, http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	f.tokenScopes = append(f.tokenScopes, r.URL.Query()["scope"]...)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": testToken, "expires_in": 300})
}

func (f *fakeUpstream) scopes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.tokenScopes...)
}

// testTransport is the tests' own base transport. Not
// http.DefaultTransport: every httptest.Server's Close closes that one's
// idle connections, which breaks a request another parallel test has just
// sent on one ("CloseIdleConnections called").
var testTransport = http.DefaultTransport.(*http.Transport).Clone()

// seedTransport marks requests so fakeUpstream lets them past its auth.
type seedTransport struct{}

func (seedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Seed", "1")
	return testTransport.RoundTrip(r)
}

// push writes a random image to host/repo:tag and returns it with its
// digest and raw manifest.
func push(t *testing.T, host, repo, tag string) (v1.Image, v1.Hash, []byte) {
	t.Helper()
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(seedTransport{})); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return img, d, raw
}

func newTestClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func sha256Hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}
