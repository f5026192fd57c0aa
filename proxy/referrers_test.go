package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const mediaTypeSPDX = "application/spdx+json"

// referrersFront puts a handler in front of an in-memory registry: intercept
// answers a request itself when it returns true. It records the query of
// every referrers request that reaches it.
type referrersFront struct {
	srv     *httptest.Server
	mu      sync.Mutex
	queries []url.Values
}

func newReferrersFront(t *testing.T, next http.Handler, intercept func(w http.ResponseWriter, r *http.Request) bool) *referrersFront {
	t.Helper()
	f := &referrersFront{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/referrers/") {
			f.mu.Lock()
			f.queries = append(f.queries, r.URL.Query())
			f.mu.Unlock()
		}
		if intercept != nil && intercept(w, r) {
			return
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *referrersFront) referrerQueries() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

// noReferrersAPI answers 404 to the referrers API, as distribution 2.8
// does.
func noReferrersAPI(w http.ResponseWriter, r *http.Request) bool {
	if strings.Contains(r.URL.Path, "/referrers/") {
		http.NotFound(w, r)
		return true
	}
	return false
}

// registryWithoutReferrers is an in-memory registry seen two ways: reg
// (with the referrers API, for the test's writes) and front, the proxy's
// upstream, which has no referrers API.
func registryWithoutReferrers(t *testing.T, intercept func(w http.ResponseWriter, r *http.Request) bool) (*upstreamRegistry, *referrersFront) {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	reg := &upstreamRegistry{srv: srv, host: strings.TrimPrefix(srv.URL, "http://")}
	front := newReferrersFront(t, h, func(w http.ResponseWriter, r *http.Request) bool {
		if intercept != nil && intercept(w, r) {
			return true
		}
		return noReferrersAPI(w, r)
	})
	return reg, front
}

// attachSBOM pushes an artifact whose config media type is SPDX, with
// subject d, to repo: an OCI 1.1 referrer of another artifact type than
// the signatures.
func (u *upstreamRegistry) attachSBOM(t *testing.T, repo string, d v1.Hash) v1.Descriptor {
	t.Helper()
	subject, err := remote.Get(u.ref(t, repo, d))
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mediaTypeSPDX)
	art = mutate.Subject(art, subject.Descriptor).(v1.Image)
	desc, err := partial.Descriptor(art)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(u.ref(t, repo, desc.Digest), art); err != nil {
		t.Fatal(err)
	}
	desc.ArtifactType = mediaTypeSPDX
	return *desc
}

// fetchReferrers GETs target from the proxy and decodes a 200 answer.
func fetchReferrers(t *testing.T, p http.Handler, target string) (*httptest.ResponseRecorder, v1.IndexManifest) {
	t.Helper()
	w := do(p, http.MethodGet, target)
	var idx v1.IndexManifest
	if w.Code != http.StatusOK {
		return w, idx
	}
	if ct := w.Header().Get("Content-Type"); ct != string(types.OCIImageIndex) {
		t.Errorf("Content-Type = %q", ct)
	}
	if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(w.Body.Len()) {
		t.Errorf("Content-Length = %q for %d bytes", cl, w.Body.Len())
	}
	if err := json.Unmarshal(w.Body.Bytes(), &idx); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != types.OCIImageIndex {
		t.Errorf("answer is not an OCI index: schemaVersion %d, mediaType %q", idx.SchemaVersion, idx.MediaType)
	}
	return w, idx
}

func digestsOf(ds []v1.Descriptor) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Digest.String())
	}
	slices.Sort(out)
	return out
}

func sortedByDigest(ds []v1.Descriptor) []v1.Descriptor {
	out := slices.Clone(ds)
	slices.SortFunc(out, func(a, b v1.Descriptor) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	return out
}

func strs(hs ...v1.Hash) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.String())
	}
	slices.Sort(out)
	return out
}

// TestReferrersFromUpstreamAPI: an upstream with the referrers API is
// relayed as it lists, and filtered by artifactType with the filter
// announced; ns routes the request and is never sent upstream.
func TestReferrersFromUpstreamAPI(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	reg.sign(t, "acme/app", img.digest, newKey(t))
	sbom := reg.attachSBOM(t, "acme/app", img.digest).Digest
	front := newReferrersFront(t, reg.srv.Config.Handler, nil)
	p, _ := newTestProxy(t, front.srv.URL, allowAll())

	base := "/v2/acme/app/referrers/" + img.digest.String() + "?ns=docker.io"
	w, all := fetchReferrers(t, p, base)
	if w.Code != http.StatusOK {
		t.Fatalf("referrers = %d %s", w.Code, w.Body)
	}
	if h := w.Header().Get("OCI-Filters-Applied"); h != "" {
		t.Errorf("OCI-Filters-Applied = %q without a filter", h)
	}
	direct, err := remote.Referrers(reg.ref(t, "acme/app", img.digest))
	if err != nil {
		t.Fatal(err)
	}
	upstreamList, err := direct.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Manifests) != 2 || !reflect.DeepEqual(sortedByDigest(all.Manifests), sortedByDigest(upstreamList.Manifests)) {
		t.Errorf("listing through the proxy = %+v, upstream lists %+v", all.Manifests, upstreamList.Manifests)
	}

	w, filtered := fetchReferrers(t, p, base+"&artifactType="+url.QueryEscape(mediaTypeSPDX))
	if w.Code != http.StatusOK {
		t.Fatalf("filtered referrers = %d %s", w.Code, w.Body)
	}
	if got := digestsOf(filtered.Manifests); !reflect.DeepEqual(got, strs(sbom)) {
		t.Errorf("filtered listing = %v, want only the SBOM %s", got, sbom)
	}
	if h := w.Header().Get("OCI-Filters-Applied"); h != "artifactType" {
		t.Errorf("OCI-Filters-Applied = %q, want artifactType", h)
	}

	qs := front.referrerQueries()
	if len(qs) != 2 {
		t.Fatalf("%d referrers requests upstream, want 2", len(qs))
	}
	for _, q := range qs {
		if q.Has("ns") {
			t.Errorf("ns forwarded upstream: %v", q)
		}
	}
	if got := qs[1].Get("artifactType"); got != mediaTypeSPDX {
		t.Errorf("artifactType upstream = %q, want %q", got, mediaTypeSPDX)
	}
	if n := counterValue(t, p, "portcullis_referrers_total", map[string]string{"upstream": "docker.io", "source": referrersAPI}); n != 2 {
		t.Errorf("portcullis_referrers_total{source=api} = %v, want 2", n)
	}
}

// TestReferrersPagesAndUpstreamFilter follows an upstream that applies the
// filter itself and paginates: the pages are relayed with the next link
// rewritten to the client's path, the page token goes upstream, and
// entries of another artifact type are dropped even when the upstream
// claims to have filtered.
func TestReferrersPagesAndUpstreamFilter(t *testing.T) {
	t.Parallel()
	subject := sha([]byte("subject"))
	a, b, stray := sha([]byte("a")), sha([]byte("b")), sha([]byte("stray"))
	entry := func(d v1.Hash, at string) v1.Descriptor {
		return v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: d, Size: 100, ArtifactType: at}
	}
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		mu.Lock()
		seen = append(seen, r.URL.RawQuery)
		mu.Unlock()
		idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
		switch r.URL.Query().Get("last") {
		case "":
			idx.Manifests = []v1.Descriptor{entry(a, mediaTypeSPDX)}
			w.Header().Set("Link", `</v2/acme/app/referrers/`+subject.String()+`?artifactType=`+url.QueryEscape(mediaTypeSPDX)+`&last=`+a.Hex+`>; rel="next"`)
		default:
			idx.Manifests = []v1.Descriptor{entry(b, mediaTypeSPDX), entry(stray, fixtures.MediaTypeEmpty)}
		}
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		w.Header().Set("OCI-Filters-Applied", "artifactType")
		_ = json.NewEncoder(w).Encode(idx)
	}))
	t.Cleanup(up.Close)
	p, _ := newTestProxy(t, up.URL, allowAll())

	var got []string
	next := "/v2/acme/app/referrers/" + subject.String() + "?ns=docker.io&artifactType=" + url.QueryEscape(mediaTypeSPDX)
	for i := 0; next != ""; i++ {
		if i > 3 {
			t.Fatal("pagination does not end")
		}
		w, idx := fetchReferrers(t, p, next)
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d %s", next, w.Code, w.Body)
		}
		if h := w.Header().Get("OCI-Filters-Applied"); h != "artifactType" {
			t.Errorf("OCI-Filters-Applied = %q", h)
		}
		got = append(got, digestsOf(idx.Manifests)...)
		next = ""
		if l := w.Header().Get("Link"); l != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
			if !strings.HasPrefix(next, "/v2/acme/app/referrers/"+subject.String()+"?") || !strings.Contains(next, "ns=docker.io") {
				t.Errorf("next link %q leaves the client's path or route", l)
			}
		}
	}
	slices.Sort(got)
	if want := strs(a, b); !reflect.DeepEqual(got, want) {
		t.Errorf("pages through the proxy = %v, want %v", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || !strings.Contains(seen[1], "last="+a.Hex) || strings.Contains(strings.Join(seen, "&"), "ns=") {
		t.Errorf("queries upstream = %q, want the page token forwarded and ns never", seen)
	}
}

// TestReferrersFallbackIndex: an upstream without the referrers API gets a
// listing synthesised from the fallback tag, filtered on request; a
// subject without a fallback tag has an empty listing.
func TestReferrersFallbackIndex(t *testing.T) {
	t.Parallel()
	reg, front := registryWithoutReferrers(t, nil)
	img := reg.pushImage(t, "acme/app", "v1")
	bare := reg.pushImage(t, "acme/app", "v2")
	ctx := context.Background()
	sig, err := fixtures.AttachBundle(ctx, reg.ref(t, "acme/app", img.digest), newKey(t),
		fixtures.BundleSpec{Placement: fixtures.PlaceReferrer | fixtures.PlaceFallback})
	if err != nil {
		t.Fatal(err)
	}
	sbomDesc := reg.attachSBOM(t, "acme/app", img.digest)
	sbom := sbomDesc.Digest
	if err := fixtures.AddFallbackEntry(ctx, reg.ref(t, "acme/app", img.digest), sbomDesc); err != nil {
		t.Fatal(err)
	}
	p, spy := newTestProxy(t, front.srv.URL, allowAll())

	base := "/v2/acme/app/referrers/" + img.digest.String() + "?ns=docker.io"
	before := spy.count()
	w, all := fetchReferrers(t, p, base)
	if w.Code != http.StatusOK {
		t.Fatalf("referrers = %d %s", w.Code, w.Body)
	}
	fallback, err := remote.Get(reg.ref(t, "acme/app", img.digest).Context().Tag("sha256-" + img.digest.Hex))
	if err != nil {
		t.Fatal(err)
	}
	var fi v1.IndexManifest
	if err := json.Unmarshal(fallback.Manifest, &fi); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(all.Manifests, fi.Manifests) || !reflect.DeepEqual(digestsOf(all.Manifests), strs(sig, sbom)) {
		t.Errorf("synthesised listing = %+v, fallback index lists %+v", all.Manifests, fi.Manifests)
	}
	asked := strings.Join(spy.since(before), " | ")
	if !strings.Contains(asked, "GET /v2/acme/app/referrers/") || !strings.Contains(asked, "GET /v2/acme/app/manifests/sha256-"+img.digest.Hex) {
		t.Errorf("upstream requests = %s, want the referrers API then the fallback tag", asked)
	}

	// The fixture labels fallback entries as cosign v2.6.5 does: with the
	// empty type, which is what the listing says and what filters match.
	w, sigs := fetchReferrers(t, p, base+"&artifactType="+url.QueryEscape(fixtures.MediaTypeEmpty))
	if w.Code != http.StatusOK {
		t.Fatalf("filtered referrers = %d %s", w.Code, w.Body)
	}
	if got := digestsOf(sigs.Manifests); !reflect.DeepEqual(got, strs(sig)) {
		t.Errorf("filtered listing = %v, want only the signature %s", got, sig)
	}
	if h := w.Header().Get("OCI-Filters-Applied"); h != "artifactType" {
		t.Errorf("OCI-Filters-Applied = %q, want artifactType", h)
	}
	if n := counterValue(t, p, "portcullis_referrers_total", map[string]string{"source": referrersFallback}); n != 2 {
		t.Errorf("portcullis_referrers_total{source=fallback} = %v, want 2", n)
	}

	w, none := fetchReferrers(t, p, "/v2/acme/app/referrers/"+bare.digest.String()+"?ns=docker.io")
	if w.Code != http.StatusOK {
		t.Fatalf("referrers without fallback tag = %d %s", w.Code, w.Body)
	}
	if len(none.Manifests) != 0 || !bytes.Contains(w.Body.Bytes(), []byte(`"manifests":[]`)) {
		t.Errorf("listing without fallback tag = %s, want manifests: []", w.Body)
	}
	if n := counterValue(t, p, "portcullis_referrers_total", map[string]string{"source": referrersEmpty}); n != 1 {
		t.Errorf("portcullis_referrers_total{source=empty} = %v, want 1", n)
	}
}

// TestReferrersMalformedFallbackIndex: a fallback tag that is not a
// well-formed OCI index is a 502 naming it, never an empty listing.
func TestReferrersMalformedFallbackIndex(t *testing.T) {
	t.Parallel()
	d := sha([]byte("x"))
	for _, tc := range []struct {
		name, contentType, body string
	}{
		{"not JSON", string(types.OCIImageIndex), "<html>not found</html>"},
		{"trailing data", string(types.OCIImageIndex), `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]} {}`},
		{"schemaVersion 1", string(types.OCIImageIndex), `{"schemaVersion":1,"manifests":[]}`},
		{"entry without digest", string(types.OCIImageIndex), `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1}]}`},
		{"Docker manifest list", string(types.DockerManifestList), `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`},
		{"Docker manifest list by Content-Type only", string(types.DockerManifestList), `{"schemaVersion":2,"manifests":[]}`},
		{"image manifest", string(types.OCIManifestSchema1), `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`},
		{"larger than a manifest may be", string(types.OCIImageIndex), `{"schemaVersion":2,"manifests":[],"annotations":{"pad":"` + strings.Repeat("a", upstream.MaxManifestBytes) + `"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, front := registryWithoutReferrers(t, func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/manifests/sha256-"+d.Hex) {
					return false
				}
				w.Header().Set("Content-Type", tc.contentType)
				_, _ = io.WriteString(w, tc.body)
				return true
			})
			p, _ := newTestProxy(t, front.srv.URL, allowAll())
			w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+d.String()+"?ns=docker.io")
			if w.Code != http.StatusBadGateway {
				t.Fatalf("malformed fallback index = %d %s, want 502", w.Code, w.Body)
			}
			if bytes.Contains(w.Body.Bytes(), []byte(`"manifests"`)) {
				t.Errorf("502 body carries a listing: %s", w.Body)
			}
		})
	}
	// The message names the fallback tag, so an operator knows what to fix.
	_, front := registryWithoutReferrers(t, func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/manifests/sha256-"+d.Hex) {
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			_, _ = io.WriteString(w, `{"schemaVersion":1}`)
			return true
		}
		return false
	})
	p, _ := newTestProxy(t, front.srv.URL, allowAll())
	w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+d.String()+"?ns=docker.io")
	if !strings.Contains(w.Body.String(), "fallback tag sha256-"+d.Hex) || !strings.Contains(w.Body.String(), "not a valid OCI image index") {
		t.Errorf("message %s does not name the malformed fallback tag", w.Body)
	}
}

// TestReferrersOversizedUpstream: an answer past the bound is refused as a
// whole, never cut to a shorter listing.
func TestReferrersOversizedUpstream(t *testing.T) {
	t.Parallel()
	subject := sha([]byte("subject"))
	// A well-formed index just over the bound: a cut copy would parse.
	var big bytes.Buffer
	big.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for i := 0; big.Len() <= upstream.MaxReferrersBytes; i++ {
		if i > 0 {
			big.WriteByte(',')
		}
		fmt.Fprintf(&big, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":1}`, sha([]byte(strconv.Itoa(i))))
	}
	big.WriteString(`]}`)
	for _, declared := range []bool{true, false} {
		t.Run("Content-Length "+strconv.FormatBool(declared), func(t *testing.T) {
			t.Parallel()
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				w.Header().Set("Content-Type", string(types.OCIImageIndex))
				if declared {
					w.Header().Set("Content-Length", strconv.Itoa(big.Len()))
				}
				_, _ = w.Write(big.Bytes())
			}))
			t.Cleanup(up.Close)
			p, _ := newTestProxy(t, up.URL, allowAll())
			w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+subject.String()+"?ns=docker.io")
			if w.Code != http.StatusBadGateway {
				t.Fatalf("oversized referrers = %d (%d bytes), want 502", w.Code, w.Body.Len())
			}
			if n := counterValue(t, p, "portcullis_upstream_errors_total", map[string]string{"kind": "too_large"}); n != 1 {
				t.Errorf("too_large errors = %v, want 1", n)
			}
		})
	}
}

// TestReferrersUpstreamFailure: an upstream that fails (5xx, unreachable,
// or failing on the fallback tag) is a 502; only a 404 from the referrers
// API leads to the fallback tag, and only a 404 there to an empty listing.
func TestReferrersUpstreamFailure(t *testing.T) {
	t.Parallel()
	d := sha([]byte("x"))
	failAt := func(suffix string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasSuffix(r.URL.Path, suffix) {
				http.Error(w, "overloaded", http.StatusServiceUnavailable)
				return true
			}
			return false
		}
	}
	t.Run("referrers API 5xx", func(t *testing.T) {
		t.Parallel()
		reg := newRegistry(t)
		front := newReferrersFront(t, reg.srv.Config.Handler, failAt("/referrers/"+d.String()))
		p, spy := newTestProxy(t, front.srv.URL, allowAll())
		w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+d.String()+"?ns=docker.io")
		if w.Code != http.StatusBadGateway {
			t.Fatalf("referrers with a failing upstream = %d %s, want 502", w.Code, w.Body)
		}
		for _, r := range spy.since(0) {
			if strings.Contains(r, "/manifests/") {
				t.Errorf("a failing referrers API fell back to the tag: %s", r)
			}
		}
	})
	t.Run("fallback tag 5xx", func(t *testing.T) {
		t.Parallel()
		_, front := registryWithoutReferrers(t, failAt("/manifests/sha256-"+d.Hex))
		p, _ := newTestProxy(t, front.srv.URL, allowAll())
		w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+d.String()+"?ns=docker.io")
		if w.Code != http.StatusBadGateway {
			t.Fatalf("referrers with a failing fallback tag = %d %s, want 502", w.Code, w.Body)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		gone := httptest.NewServer(http.NotFoundHandler())
		gone.Close()
		p, _ := newTestProxy(t, gone.URL, allowAll())
		w := do(p, http.MethodGet, "/v2/acme/app/referrers/"+d.String()+"?ns=docker.io")
		if w.Code != http.StatusBadGateway {
			t.Fatalf("referrers of an unreachable upstream = %d %s, want 502", w.Code, w.Body)
		}
	})
}

func TestMergeReferrers(t *testing.T) {
	t.Parallel()
	a, b, s := sha([]byte("a")), sha([]byte("b")), sha([]byte("summary"))
	sig := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: a, Size: 1, ArtifactType: fixtures.MediaTypeBundleV03}
	sbom := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: b, Size: 2, ArtifactType: mediaTypeSPDX}
	untyped := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: sha([]byte("untyped")), Size: 3}
	summary := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: s, Size: 4, ArtifactType: "application/vnd.portcullis.summary.v1+json"}
	for _, tc := range []struct {
		name              string
		listed, summaries []v1.Descriptor
		filter            map[string]bool
		want              []v1.Descriptor
	}{
		{"nothing is an empty list", nil, nil, nil, []v1.Descriptor{}},
		{"summaries follow the listing", []v1.Descriptor{sig, sbom}, []v1.Descriptor{summary}, nil, []v1.Descriptor{sig, sbom, summary}},
		{"a digest once", []v1.Descriptor{sig, sig}, []v1.Descriptor{sig, summary, summary}, nil, []v1.Descriptor{sig, summary}},
		{"filter on the listing", []v1.Descriptor{sig, sbom, untyped}, nil, map[string]bool{mediaTypeSPDX: true}, []v1.Descriptor{sbom}},
		{"filter on summaries", []v1.Descriptor{sig}, []v1.Descriptor{summary}, map[string]bool{mediaTypeSPDX: true}, []v1.Descriptor{}},
		{"any of several types", []v1.Descriptor{sig, sbom, untyped}, []v1.Descriptor{summary},
			map[string]bool{fixtures.MediaTypeBundleV03: true, summary.ArtifactType: true}, []v1.Descriptor{sig, summary}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := mergeReferrers(tc.listed, tc.summaries, tc.filter)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("mergeReferrers = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReferrersRequestParts(t *testing.T) {
	t.Parallel()
	for target, first := range map[string]bool{
		"/v2/x/referrers/d": true,
		"/v2/x/referrers/d?ns=docker.io&artifactType=a&n=5": true,
		"/v2/x/referrers/d?ns=docker.io&last=abc":           false,
		"/v2/x/referrers/d?artifactType=a&page=2":           false,
	} {
		if got := firstReferrersPage(httptest.NewRequest("GET", target, nil)); got != first {
			t.Errorf("firstReferrersPage(%s) = %v, want %v", target, got, first)
		}
	}
	for target, want := range map[string]map[string]bool{
		"/v2/x/referrers/d?ns=docker.io":                   nil,
		"/v2/x/referrers/d?artifactType=":                  nil,
		"/v2/x/referrers/d?artifactType=a":                 {"a": true},
		"/v2/x/referrers/d?artifactType=a&artifactType=b":  {"a": true, "b": true},
		"/v2/x/referrers/d?artifactType=&artifactType=b&n": {"b": true},
	} {
		if got := artifactTypeFilter(httptest.NewRequest("GET", target, nil)); !reflect.DeepEqual(got, want) {
			t.Errorf("artifactTypeFilter(%s) = %v, want %v", target, got, want)
		}
	}
	sha512, err := v1.NewHash("sha512:" + strings.Repeat("ab", 64))
	if err != nil {
		t.Fatal(err)
	}
	if got := fallbackTag(sha512); got != "sha512-"+strings.Repeat("ab", 32) {
		t.Errorf("fallbackTag(sha512) = %q, want the hex cut to 64 characters", got)
	}
	if _, err := name.NewTag("example.com/x:" + fallbackTag(sha512)); err != nil {
		t.Errorf("fallback tag of a sha512 digest is not a tag: %v", err)
	}
	d := sha([]byte("x"))
	if got := fallbackTag(d); got != "sha256-"+d.Hex {
		t.Errorf("fallbackTag(%s) = %q", d, got)
	}
}

// TestReferrersAbsentSkipsTheRequest: against an upstream without the
// referrers API, only the first cold verification asks for referrers;
// later ones go straight to the fallback tag, and still allow what the
// fallback index lists and deny what it does not.
func TestReferrersAbsentSkipsTheRequest(t *testing.T) {
	t.Parallel()
	reg, front := registryWithoutReferrers(t, nil)
	k := newKey(t)
	pol := verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}}
	var signed []pushed
	for _, tag := range []string{"v1", "v2", "v3"} {
		img := reg.pushImage(t, "acme/app", tag)
		if _, err := fixtures.AttachBundle(context.Background(), reg.ref(t, "acme/app", img.digest), k,
			fixtures.BundleSpec{Placement: fixtures.PlaceReferrer | fixtures.PlaceFallback}); err != nil {
			t.Fatal(err)
		}
		signed = append(signed, img)
	}
	unsigned := reg.pushImage(t, "acme/app", "v4")
	p, _ := newTestProxy(t, front.srv.URL, newEngineSpy(t, pol))
	for _, img := range signed {
		if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("signed %s = %d %s", img.digest, w.Code, w.Body)
		}
	}
	if w := do(p, http.MethodGet, manifestPath("acme/app", unsigned.digest.String())); w.Code != http.StatusForbidden {
		t.Fatalf("unsigned = %d", w.Code)
	}
	if n := len(front.referrerQueries()); n != 1 {
		t.Errorf("the upstream without the referrers API was asked for referrers %d times, want 1", n)
	}
}
