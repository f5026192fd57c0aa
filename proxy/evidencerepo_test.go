package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// urlSpy records the host and path of every upstream request.
type urlSpy struct {
	mu   sync.Mutex
	urls []string // "host/path"
	rt   http.RoundTripper
}

func (s *urlSpy) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.urls = append(s.urls, r.URL.Host+r.URL.Path)
	s.mu.Unlock()
	return s.rt.RoundTrip(r)
}

// evidenceReads lists the evidence requests (referrers, tags and blobs
// other than the subject's manifest) made to host.
func (s *urlSpy) evidenceReads(host string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, u := range s.urls {
		if p, ok := strings.CutPrefix(u, host+"/v2/"); ok && (strings.Contains(p, "/referrers/") || strings.Contains(p, "/manifests/sha256-") || strings.Contains(p, "/blobs/")) {
			out = append(out, p)
		}
	}
	return out
}

// mirrorSetup is an image mirrored into upstream "a" as mirror/app, its
// source src/app (the same image) on upstream "b", and a proxy whose one
// boundary covers a's mirror/ with the given signature repository.
type mirrorSetup struct {
	a, b *upstreamRegistry
	img  pushed
	key  *fixtures.KeySigner
	spy  *urlSpy
}

func newMirrorSetup(t *testing.T) *mirrorSetup {
	t.Helper()
	m := &mirrorSetup{a: newRegistry(t), b: newRegistry(t), key: newKey(t)}
	m.img = m.a.pushImage(t, "mirror/app", "v1")
	img, err := remote.Image(m.a.ref(t, "mirror/app", m.img.digest))
	if err != nil {
		t.Fatal(err)
	}
	src, err := name.ParseReference(m.b.host+"/src/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(src, img); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *mirrorSetup) proxy(t *testing.T, repo *verify.EvidenceRepository) *Proxy {
	t.Helper()
	m.spy = &urlSpy{rt: http.DefaultTransport.(*http.Transport).Clone()}
	eng, err := verify.New(verify.Policy{Boundaries: []verify.Boundary{{
		Name: "mirrored", Upstream: "a", Repositories: []string{"mirror/**"}, Mode: verify.ModeEnforce,
		Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", m.key)},
		SignatureRepository: repo,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	ups := []Upstream{
		{Name: "a", URL: m.a.srv.URL, Insecure: true},
		{Name: "src.example", URL: m.b.srv.URL, Aliases: []string{"b"}, Insecure: true},
	}
	p, err := New(ups, eng, WithTransport(m.spy))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (m *mirrorSetup) pull(p *Proxy) *httptest.ResponseRecorder {
	return do(p, http.MethodGet, "/v2/a/mirror/app/manifests/v1")
}

// signAt signs the image's digest with the fixtures' cosign writers in
// repo of reg.
func (m *mirrorSetup) signAt(t *testing.T, reg *upstreamRegistry, repo string, tamper fixtures.Tamper) {
	t.Helper()
	if err := fixtures.AttachLegacySignature(context.Background(), reg.ref(t, repo, m.img.digest), m.key, tamper); err != nil {
		t.Fatal(err)
	}
}

func TestEvidenceRepositoryThroughProxy(t *testing.T) {
	t.Parallel()
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ef", 32)}
	source := &verify.EvidenceRepository{Upstream: "src.example", Repository: "src/{repository}", StripPrefix: "mirror"}
	tests := []struct {
		name string
		repo *verify.EvidenceRepository
		sign func(t *testing.T, m *mirrorSetup)
		// want is "" for an allow, else a reason of the denial.
		want string
		// readsB is the repository of b all evidence requests must go
		// to, at least one; upstream a never has any when the boundary
		// points elsewhere. sawB is one request b must have had.
		readsB, sawB string
	}{
		{
			name: "legacy signature in the source repository", repo: source,
			sign:   func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.b, "src/app", fixtures.Tamper{}) },
			readsB: "src/app/",
		},
		{
			name: "bundle referrer in the source repository", repo: source,
			sign: func(t *testing.T, m *mirrorSetup) {
				if _, err := fixtures.AttachBundle(context.Background(), m.b.ref(t, "src/app", m.img.digest), m.key, fixtures.BundleSpec{}); err != nil {
					t.Fatal(err)
				}
			},
			readsB: "src/app/", sawB: "src/app/referrers/" + "DIGEST",
		},
		{
			name: "no signatures repository: the source's signature is not found",
			sign: func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.b, "src/app", fixtures.Tamper{}) },
			want: "no signatures found (checked",
		},
		{
			name: "signature in the source over another digest", repo: source,
			sign: func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.b, "src/app", fixtures.Tamper{SignDigest: &other}) },
			want: "cosign-legacy sig[0] in src.example/src/app: ", readsB: "src/app/",
		},
		{
			name: "boundary pointing at the wrong repository",
			repo: &verify.EvidenceRepository{Upstream: "src.example", Repository: "sigs/{repository}", StripPrefix: "mirror"},
			sign: func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.b, "src/app", fixtures.Tamper{}) },
			want: "no signatures found in src.example/sigs/app (checked", readsB: "sigs/app/",
		},
		{
			// The signature sits in the mirror itself; the boundary says
			// to look in the source, so the mirror's copy is not read.
			name: "signature only in the mirror", repo: source,
			sign: func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.a, "mirror/app", fixtures.Tamper{}) },
			want: "no signatures found in src.example/src/app (checked", readsB: "src/app/",
		},
		{
			name: "upstream the proxy does not have",
			repo: &verify.EvidenceRepository{Upstream: "c.example", Repository: "src/{repository}", StripPrefix: "mirror"},
			sign: func(t *testing.T, m *mirrorSetup) { m.signAt(t, m.b, "src/app", fixtures.Tamper{}) },
			want: `evidence repository c.example/src/app: upstream "c.example" cannot be read`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newMirrorSetup(t)
			tc.sign(t, m)
			p := m.proxy(t, tc.repo)
			w := m.pull(p)
			if tc.want == "" {
				if w.Code != http.StatusOK || w.Body.String() != string(m.img.raw) {
					t.Fatalf("status %d, want 200 with the image: %s", w.Code, w.Body)
				}
			} else {
				_, detail := deniedBody(t, w)
				if rs := detailReasons(detail); !strings.Contains(strings.Join(rs, "\n"), tc.want) {
					t.Fatalf("reasons %q do not mention %q", rs, tc.want)
				}
			}
			readsA, readsB := m.spy.evidenceReads(m.a.host), m.spy.evidenceReads(m.b.host)
			if tc.repo == nil {
				if len(readsA) == 0 || len(readsB) != 0 {
					t.Fatalf("evidence reads: a %q, b %q; want only a", readsA, readsB)
				}
				return
			}
			if len(readsA) != 0 {
				t.Fatalf("evidence read from the mirror: %q", readsA)
			}
			if tc.readsB == "" {
				if len(readsB) != 0 {
					t.Fatalf("evidence read from b: %q", readsB)
				}
				return
			}
			for _, r := range readsB {
				if !strings.HasPrefix(r, tc.readsB) {
					t.Fatalf("evidence read at b outside %q: %q", tc.readsB, readsB)
				}
			}
			if want := strings.ReplaceAll(tc.sawB, "DIGEST", m.img.digest.String()); len(readsB) == 0 || (want != "" && !slices.Contains(readsB, want)) {
				t.Fatalf("evidence reads at b %q, want %q among them", readsB, want)
			}
		})
	}
}
