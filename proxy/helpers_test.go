package proxy

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
)

// containerdAccept is the Accept list containerd sends when resolving.
var containerdAccept = []string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"*/*",
}

// fakeVerifier decides with fn and counts calls. Every subject falls in
// the boundary "prod" unless boundary says otherwise; the fingerprint is
// "test-policy" until set.
type fakeVerifier struct {
	fn          func(ctx context.Context, s verify.Subject) (verify.Verdict, error)
	boundary    func(upstream, repo, artifactType string) (string, bool)
	fingerprint atomic.Pointer[string]
	calls       atomic.Int64
}

func (f *fakeVerifier) Verify(ctx context.Context, s verify.Subject, _ verify.Fetcher) (verify.Verdict, error) {
	f.calls.Add(1)
	return f.fn(ctx, s)
}

// FingerprintFor is the whole fingerprint: the fake has no boundaries
// to scope it to.
func (f *fakeVerifier) FingerprintFor(string, string) string { return f.Fingerprint() }

func (f *fakeVerifier) Fingerprint() string {
	if fp := f.fingerprint.Load(); fp != nil {
		return *fp
	}
	return "test-policy"
}

func (f *fakeVerifier) setFingerprint(fp string) { f.fingerprint.Store(&fp) }

func (f *fakeVerifier) BoundaryName(upstream, repo, artifactType string) (string, bool) {
	if f.boundary != nil {
		return f.boundary(upstream, repo, artifactType)
	}
	return "prod", true
}

// BlobMode: every repository is in the enforce boundary "prod".
func (f *fakeVerifier) BlobMode(string, string) (string, verify.Mode, bool) {
	return "prod", verify.ModeEnforce, true
}

func allowAll() *fakeVerifier {
	return &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String(),
			Signers: []verify.Signer{{Authority: "release", Kind: "key", Evidence: "sigstore-bundle"}}}, nil
	}}
}

func denyAll(mode verify.Mode) *fakeVerifier {
	return &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{Allowed: false, Mode: mode, Boundary: "prod", Digest: s.Digest.String(),
			Reasons: []string{"no valid signature from authorities [release]"}}, nil
	}}
}

func failing(err error) *fakeVerifier {
	return &fakeVerifier{fn: func(context.Context, verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{}, err
	}}
}

// spy counts the requests that reach the upstream.
type spy struct {
	mu   sync.Mutex
	reqs []string // "METHOD /path"
	rt   http.RoundTripper
}

// newSpy keeps as many idle connections per host as the upstream
// client's own transport does (net/http's default is two): a cold
// verification reads several things at once, and with two idle
// connections kept the others would be redialled every time, which
// handler benchmarks would then measure and production never pays.
func newSpy() *spy {
	rt := http.DefaultTransport.(*http.Transport).Clone()
	rt.MaxIdleConnsPerHost = upstream.DefaultMaxConns
	return &spy{rt: rt}
}

func (s *spy) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r.Method+" "+r.URL.Path)
	s.mu.Unlock()
	return s.rt.RoundTrip(r)
}

func (s *spy) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

// since returns the requests made after the first n.
func (s *spy) since(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reqs[n:]...)
}

// mapVerdicts is a VerdictCache; onGet observes every lookup.
type mapVerdicts struct {
	mu    sync.Mutex
	m     map[string]verify.Verdict
	gets  atomic.Int64
	onGet func(n int64)
}

func newMapVerdicts() *mapVerdicts { return &mapVerdicts{m: map[string]verify.Verdict{}} }

func (c *mapVerdicts) Get(k string) (verify.Verdict, bool) {
	c.mu.Lock()
	v, ok := c.m[k]
	c.mu.Unlock()
	n := c.gets.Add(1)
	if c.onGet != nil {
		c.onGet(n)
	}
	return v, ok
}

func (c *mapVerdicts) Add(k string, v verify.Verdict) {
	c.mu.Lock()
	c.m[k] = v
	c.mu.Unlock()
}

func (c *mapVerdicts) Remove(k string) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

func (c *mapVerdicts) RemoveFunc(match func(verify.Verdict) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.m {
		if match(v) {
			delete(c.m, k)
			n++
		}
	}
	return n
}

func (c *mapVerdicts) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

type mapManifests struct {
	mu sync.Mutex
	m  map[string]verify.Manifest
}

func newMapManifests() *mapManifests { return &mapManifests{m: map[string]verify.Manifest{}} }

func (c *mapManifests) Get(d string) (verify.Manifest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.m[d]
	return m, ok
}

func (c *mapManifests) Add(m verify.Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[m.Digest.String()] = m
}

// upstreamRegistry is go-containerregistry's in-memory registry over HTTP.
type upstreamRegistry struct {
	srv  *httptest.Server
	host string
}

func newRegistry(t testing.TB) *upstreamRegistry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	t.Cleanup(srv.Close)
	return &upstreamRegistry{srv: srv, host: strings.TrimPrefix(srv.URL, "http://")}
}

type pushed struct {
	digest   v1.Hash
	raw      []byte
	mt       string
	config   v1.Hash
	layers   []v1.Hash
	children []v1.Hash
}

func (u *upstreamRegistry) pushImage(t testing.TB, repo, tag string) pushed {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return describeImage(t, img)
}

func describeImage(t testing.TB, img v1.Image) pushed {
	t.Helper()
	d, _ := img.Digest()
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	p := pushed{digest: d, raw: raw, mt: string(mt), config: m.Config.Digest}
	for _, l := range m.Layers {
		p.layers = append(p.layers, l.Digest)
	}
	return p
}

func (u *upstreamRegistry) pushIndex(t *testing.T, repo, tag string) (pushed, []pushed) {
	t.Helper()
	idx, err := random.Index(512, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	return u.writeIndex(t, idx, repo, tag)
}

// writeIndex pushes idx and its images to repo:tag.
func (u *upstreamRegistry) writeIndex(t *testing.T, idx v1.ImageIndex, repo, tag string) (pushed, []pushed) {
	t.Helper()
	ref, err := name.ParseReference(u.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	raw, _ := idx.RawManifest()
	mt, _ := idx.MediaType()
	im, _ := idx.IndexManifest()
	p := pushed{digest: d, raw: raw, mt: string(mt)}
	var kids []pushed
	for _, c := range im.Manifests {
		p.children = append(p.children, c.Digest)
		img, err := idx.Image(c.Digest)
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, describeImage(t, img))
	}
	return p, kids
}

// newTestProxy puts a proxy in front of one upstream named docker.io with
// a spy transport.
func newTestProxy(t testing.TB, upstreamURL string, v Verifier, opts ...Option) (*Proxy, *spy) {
	t.Helper()
	s := newSpy()
	ups := []Upstream{
		{Name: "docker.io", URL: upstreamURL, Aliases: []string{"docker.io", "index.docker.io"}, Insecure: true},
		{Name: "ghcr.io", URL: upstreamURL, Insecure: true},
	}
	p, err := New(ups, v, append([]Option{WithTransport(s)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

// do sends one request straight to the handler.
func do(p http.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r)
	return w
}

func acceptHeaders(list []string) []string {
	var h []string
	for _, a := range list {
		h = append(h, "Accept", a)
	}
	return h
}
