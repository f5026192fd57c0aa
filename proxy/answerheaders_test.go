package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// A manifest is answered with its own digest, media type and length on
// every path: a GET by digest cold and warm, a HEAD by digest, and a HEAD
// by tag whose verdict is cached, answered from what the upstream's HEAD
// said without fetching the bytes. An upstream HEAD that gives a length of
// zero, which no manifest has, is not passed on: the bytes are fetched
// and the length is theirs. A manifest the upstream sends as plain JSON is
// answered with the media type its bytes declare, which is what a client
// parses it by.
func TestManifestAnswerHeaders(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/app", "v2")
	third := reg.pushImage(t, "acme/app", "v3")
	rp := relayTo(t, reg, nil)
	// The upstream sends the third image as application/json.
	plain := relayTo(t, reg, func(resp *http.Response) error {
		resp.Header.Set("Content-Type", "application/json")
		return nil
	})
	// zero makes the upstream answer a manifest HEAD with Content-Length: 0.
	var zero atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/"+third.digest.String()) {
			plain.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodHead || !zero.Load() || !strings.Contains(r.URL.Path, "/manifests/") {
			rp.ServeHTTP(w, r)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodHead, reg.srv.URL+r.URL.Path, nil)
		if err != nil {
			t.Error(err)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(resp.StatusCode)
	}))
	t.Cleanup(front.Close)
	// A verdict cache and no manifest cache: a warm HEAD by tag has no
	// bytes unless it fetches them.
	p, s := newTestProxy(t, front.URL, allowAll(), WithVerdictCache(newMapVerdicts()))
	check := func(name, method, target string, want pushed) {
		t.Helper()
		w := do(p, method, target, acceptHeaders(containerdAccept)...)
		h := w.Header()
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", name, w.Code, w.Body)
		}
		if got := h.Get("Docker-Content-Digest"); got != want.digest.String() {
			t.Errorf("%s: Docker-Content-Digest %q, want %s", name, got, want.digest)
		}
		if got := h.Get("Content-Type"); got != want.mt {
			t.Errorf("%s: Content-Type %q, want %q", name, got, want.mt)
		}
		if got := h.Get("Content-Length"); got != strconv.Itoa(len(want.raw)) {
			t.Errorf("%s: Content-Length %q, want %d", name, got, len(want.raw))
		}
		body := w.Body.String()
		if method == http.MethodHead {
			body, want.raw = "", nil
		}
		if body != string(want.raw) {
			t.Errorf("%s: the body is not the manifest's bytes", name)
		}
	}
	byDigest := "/v2/docker.io/acme/app/manifests/" + img.digest.String()
	check("cold GET by digest", http.MethodGet, byDigest, img)
	check("warm GET by digest", http.MethodGet, byDigest, img)
	check("HEAD by digest", http.MethodHead, byDigest, img)
	check("cold HEAD by tag", http.MethodHead, "/v2/docker.io/acme/app/manifests/v1", img)
	n := s.count()
	check("warm HEAD by tag", http.MethodHead, "/v2/docker.io/acme/app/manifests/v1", img)
	for _, r := range s.since(n) {
		if strings.HasPrefix(r, http.MethodGet) {
			t.Errorf("warm HEAD by tag fetched %s; the upstream's HEAD said all it needs", r)
		}
	}

	check("GET by digest of a manifest the upstream sends as plain JSON", http.MethodGet, "/v2/docker.io/acme/app/manifests/"+third.digest.String(), third)

	check("cold GET of the other image by digest", http.MethodGet, "/v2/docker.io/acme/app/manifests/"+other.digest.String(), other)
	zero.Store(true)
	n = s.count()
	check("HEAD by tag, the upstream's HEAD giving a length of 0", http.MethodHead, "/v2/docker.io/acme/app/manifests/v2", other)
	fetched := false
	for _, r := range s.since(n) {
		fetched = fetched || r == "GET /v2/acme/app/manifests/"+other.digest.String() || r == "GET /v2/acme/app/manifests/v2"
	}
	if !fetched {
		t.Errorf("a HEAD of length 0 was answered without fetching the manifest: %q", s.since(n))
	}
}

// A registry that does not answer HEAD on manifests, or answers it without
// a digest, has its tags resolved by GET: the tag is pulled (and a HEAD by
// tag answered) with the digest of the bytes it names, and those bytes are
// not fetched a second time by digest.
func TestTagResolvedByGet(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	rp := relayTo(t, reg, nil)
	noDigest := relayTo(t, reg, func(resp *http.Response) error {
		if resp.Request.Method == http.MethodHead {
			resp.Header.Del("Docker-Content-Digest")
		}
		return nil
	})
	for _, tc := range []struct {
		name string
		head http.HandlerFunc
	}{
		{"HEAD not allowed", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusMethodNotAllowed) }},
		{"HEAD without a digest", noDigest.ServeHTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
					tc.head(w, r)
					return
				}
				rp.ServeHTTP(w, r)
			}))
			t.Cleanup(front.Close)
			p, s := newTestProxy(t, front.URL, allowAll(), WithVerdictCache(newMapVerdicts()))
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				n := s.count()
				w := do(p, method, "/v2/docker.io/acme/app/manifests/v1", acceptHeaders(containerdAccept)...)
				if w.Code != http.StatusOK || w.Header().Get("Docker-Content-Digest") != img.digest.String() {
					t.Fatalf("%s by tag: %d, digest %q, want 200 and %s: %s", method, w.Code, w.Header().Get("Docker-Content-Digest"), img.digest, w.Body)
				}
				if method == http.MethodGet && w.Body.String() != string(img.raw) {
					t.Errorf("GET by tag: the body is not the manifest's bytes")
				}
				resolved, again := false, false
				for _, r := range s.since(n) {
					resolved = resolved || r == "GET /v2/acme/app/manifests/v1"
					again = again || r == "GET /v2/acme/app/manifests/"+img.digest.String()
				}
				if !resolved {
					t.Errorf("%s by tag: the tag was not resolved by GET: %q", method, s.since(n))
				}
				// The bytes that resolved the tag are the ones decided on
				// and served.
				if again {
					t.Errorf("%s by tag: the manifest was fetched again by digest: %q", method, s.since(n))
				}
			}
		})
	}
}

// relayTo relays requests to reg, its answers changed by modify when it
// is not nil.
func relayTo(t *testing.T, reg *upstreamRegistry, modify func(*http.Response) error) *httputil.ReverseProxy {
	t.Helper()
	target, err := url.Parse(reg.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = modify
	return rp
}
