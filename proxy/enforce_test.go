package proxy

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
)

func TestDenied(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	v := denyAll(verify.ModeEnforce)
	p, _ := newTestProxy(t, reg.srv.URL, v)
	for _, target := range []string{"/v2/acme/app/manifests/v1?ns=docker.io", "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"} {
		w := do(p, http.MethodGet, target)
		if w.Code != http.StatusForbidden {
			t.Fatalf("GET %s = %d", target, w.Code)
		}
		if bytes.Contains(w.Body.Bytes(), img.raw) {
			t.Fatal("denied manifest body was served")
		}
		e := decodeError(t, w.Body.Bytes())
		want := `denied by boundary "prod": ` + img.digest.String() + `: no valid signature from authorities [release]`
		if e.Code != CodeDenied || e.Message != want {
			t.Errorf("error = %s %q, want DENIED %q", e.Code, e.Message, want)
		}
		for k, want := range map[string]string{"boundary": "prod", "digest": img.digest.String(), "upstream": "docker.io", "repository": "acme/app"} {
			if e.Detail[k] != want {
				t.Errorf("detail[%s] = %v, want %s", k, e.Detail[k], want)
			}
		}
		if rs, _ := e.Detail["reasons"].([]any); len(rs) != 1 {
			t.Errorf("detail reasons = %v", e.Detail["reasons"])
		}
		if w.Header().Get("Docker-Content-Digest") != "" {
			t.Error("denied answer carries Docker-Content-Digest")
		}
	}
	w := do(p, http.MethodHead, "/v2/acme/app/manifests/v1?ns=docker.io", acceptHeaders(containerdAccept)...)
	if w.Code != http.StatusForbidden || w.Body.Len() != 0 {
		t.Fatalf("HEAD of a denied manifest = %d with %d body bytes", w.Code, w.Body.Len())
	}
	// A denied manifest opens none of its blobs.
	if w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+img.layers[0].String()+"?ns=docker.io"); w.Code != http.StatusForbidden {
		t.Errorf("blob of a denied manifest = %d", w.Code)
	}
	for _, d := range p.decisions.list() {
		if d.Decision != "deny" {
			t.Errorf("decision = %+v", d)
		}
	}
}

func TestVerifierErrorFailsClosedAndIsNotCached(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	v := failing(errors.New("trust root unavailable"))
	vc := newMapVerdicts()
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc))
	for i := 1; i <= 2; i++ {
		w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+img.digest.String()+"?ns=docker.io")
		if w.Code != http.StatusForbidden {
			t.Fatalf("request %d = %d, want 403", i, w.Code)
		}
		e := decodeError(t, w.Body.Bytes())
		if e.Code != CodeDenied || !strings.Contains(e.Message, "fail closed") {
			t.Errorf("error = %s %q", e.Code, e.Message)
		}
		if r, _ := e.Detail["reason"].(string); !strings.HasPrefix(r, "could not verify: ") {
			t.Errorf("detail reason = %q", r)
		}
		if got := v.calls.Load(); got != int64(i) {
			t.Fatalf("verifier calls after %d requests = %d: a failure to decide was cached", i, got)
		}
	}
	if vc.len() != 0 {
		t.Error("a verification error was stored as a verdict")
	}
}

func TestVerifierPanicFailsClosed(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	v := &fakeVerifier{fn: func(context.Context, verify.Subject) (verify.Verdict, error) { panic("bug") }}
	p, _ := newTestProxy(t, reg.srv.URL, v)
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusForbidden {
		t.Fatalf("GET with a panicking verifier = %d", w.Code)
	}
}

func TestVerdictForAnotherDigestFailsClosed(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	v := &fakeVerifier{fn: func(context.Context, verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{Allowed: true, Digest: "sha256:" + strings.Repeat("0", 64)}, nil
	}}
	p, _ := newTestProxy(t, reg.srv.URL, v)
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusForbidden {
		t.Fatalf("verdict about another digest served: %d", w.Code)
	}
}

func TestDenyIsCached(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	v := denyAll(verify.ModeEnforce)
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()))
	for range 3 {
		if w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusForbidden {
			t.Fatalf("GET = %d", w.Code)
		}
	}
	if got := v.calls.Load(); got != 1 {
		t.Errorf("verifier calls = %d, want 1", got)
	}
	d := p.decisions.list()
	if len(d) != 3 || d[0].Cached != true || d[2].Cached != false {
		t.Errorf("decisions cached flags = %+v", d)
	}
}

func TestMalformedManifestIsDenied(t *testing.T) {
	t.Parallel()
	bad := []byte(`{"schemaVersion":2,"mediaType":"` + ociManifestType + `","Layers":[],"layers":[]}`)
	d := sha(bad)
	srv := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { serveManifest(w, r, bad, d) })
	v := allowAll()
	p, err := New([]Upstream{{Name: "docker.io", URL: srv.URL, Insecure: true}}, v)
	if err != nil {
		t.Fatal(err)
	}
	w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io")
	if w.Code != http.StatusForbidden {
		t.Fatalf("malformed manifest = %d, want 403", w.Code)
	}
	if e := decodeError(t, w.Body.Bytes()); !strings.Contains(e.Message, "malformed manifest") {
		t.Errorf("message = %q", e.Message)
	}
	if v.calls.Load() != 0 {
		t.Error("a malformed manifest was handed to the verifier")
	}
}

func TestBlobGating(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/other", "v1")
	p, s := newTestProxy(t, reg.srv.URL, allowAll())

	blob := "/v2/acme/app/blobs/" + img.layers[0].String() + "?ns=docker.io"
	w := do(p, http.MethodGet, blob)
	if w.Code != http.StatusForbidden {
		t.Fatalf("blind blob = %d, want 403", w.Code)
	}
	e := decodeError(t, w.Body.Bytes())
	if want := "blob " + img.layers[0].String() + " is not referenced by any verified manifest in acme/app"; e.Code != CodeDenied || e.Message != want {
		t.Errorf("error = %s %q", e.Code, e.Message)
	}
	// One HEAD tells an existing blob from a missing one; no byte of it
	// is fetched.
	for _, req := range s.since(0) {
		if !strings.HasPrefix(req, "HEAD ") && strings.Contains(req, "/blobs/") {
			t.Fatalf("blind blob fetched from the upstream: %v", s.since(0))
		}
	}
	if got := s.since(0); len(got) == 0 || got[len(got)-1] != "HEAD /v2/acme/app/blobs/"+img.layers[0].String() {
		t.Fatalf("upstream requests for a blind blob = %v, want one HEAD of it", got)
	}
	if w := do(p, http.MethodHead, blob); w.Code != http.StatusForbidden {
		t.Errorf("blind HEAD blob = %d", w.Code)
	}
	// A blob the upstream does not have is unknown, not denied.
	missing := "/v2/acme/app/blobs/sha256:" + strings.Repeat("0", 64) + "?ns=docker.io"
	w = do(p, http.MethodGet, missing)
	if e := decodeError(t, w.Body.Bytes()); w.Code != http.StatusNotFound || e.Code != CodeBlobUnknown {
		t.Errorf("missing blob = %d %s, want 404 BLOB_UNKNOWN", w.Code, e.Code)
	}
	if w := do(p, http.MethodHead, missing); w.Code != http.StatusNotFound {
		t.Errorf("HEAD of a missing blob = %d, want 404", w.Code)
	}

	if w := do(p, http.MethodGet, "/v2/acme/other/manifests/v1?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("manifest = %d", w.Code)
	}
	// Allowed in another repository is not allowed here.
	if w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+other.layers[0].String()+"?ns=docker.io"); w.Code != http.StatusForbidden {
		t.Errorf("blob of another repository's manifest = %d", w.Code)
	}

	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("manifest = %d", w.Code)
	}
	for _, b := range append(img.layers, img.config) {
		w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+b.String()+"?ns=docker.io")
		if w.Code != http.StatusOK || !digestMatches(b, w.Body.Bytes()) {
			t.Errorf("referenced blob %s = %d", b, w.Code)
		}
	}
	w = do(p, http.MethodGet, blob, "Range", "bytes=0-9")
	if w.Code != http.StatusPartialContent || w.Body.Len() != 10 || w.Header().Get("Content-Range") == "" {
		t.Errorf("range request = %d, %d bytes, Content-Range %q", w.Code, w.Body.Len(), w.Header().Get("Content-Range"))
	}
	w = do(p, http.MethodHead, blob)
	if w.Code != http.StatusOK || w.Body.Len() != 0 || w.Header().Get("Content-Length") == "" {
		t.Errorf("HEAD blob = %d, body %d, Content-Length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}

	ungated, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithBlobGating(false))
	if w := do(ungated, http.MethodGet, blob); w.Code != http.StatusOK {
		t.Errorf("blob with gating off = %d", w.Code)
	}
}

func TestIndexCoversChildren(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	idx, kids := reg.pushIndex(t, "acme/multi", "v1")
	v := &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		if s.Digest != idx.digest {
			// Children are not signed themselves.
			return verify.Verdict{Allowed: false, Mode: verify.ModeEnforce, Boundary: "prod", Reasons: []string{"no signature"}}, nil
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod"}, nil
	}}
	p, _ := newTestProxy(t, reg.srv.URL, v)

	child := "/v2/acme/multi/manifests/" + kids[0].digest.String() + "?ns=docker.io"
	if w := do(p, http.MethodGet, child); w.Code != http.StatusForbidden {
		t.Fatalf("child before its index = %d, want 403", w.Code)
	}
	w := do(p, http.MethodGet, "/v2/acme/multi/manifests/v1?ns=docker.io", acceptHeaders(containerdAccept)...)
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), idx.raw) {
		t.Fatalf("index = %d", w.Code)
	}
	calls := v.calls.Load()
	for _, k := range kids {
		w := do(p, http.MethodGet, "/v2/acme/multi/manifests/"+k.digest.String()+"?ns=docker.io")
		if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), k.raw) {
			t.Fatalf("child %s = %d", k.digest, w.Code)
		}
		if w := do(p, http.MethodGet, "/v2/acme/multi/blobs/"+k.layers[0].String()+"?ns=docker.io"); w.Code != http.StatusOK {
			t.Errorf("blob of a covered child = %d", w.Code)
		}
	}
	if got := v.calls.Load(); got != calls {
		t.Errorf("covered children were verified again: %d calls, want %d", got, calls)
	}
	d := p.decisions.list()[0]
	if d.CoveredBy != idx.digest.String() || d.Decision != "allow" {
		t.Errorf("child decision = %+v, want covered_by %s", d, idx.digest)
	}
	// Coverage is per repository.
	other := "/v2/acme/elsewhere/manifests/" + kids[0].digest.String() + "?ns=docker.io"
	if w := do(p, http.MethodGet, other); w.Code == http.StatusOK {
		t.Error("index coverage leaked into another repository")
	}
}

func TestConcurrentRequestsShareOneVerification(t *testing.T) {
	t.Parallel()
	const n = 1000
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")

	// Every request misses the cache once before joining the flight, and
	// the flight's leader looks again before verifying: n+1 lookups mean
	// every request has passed its miss. Without coalescing each of them
	// would go on to verify.
	vc := newMapVerdicts()
	allIn := make(chan struct{})
	var once sync.Once
	vc.onGet = func(got int64) {
		if got >= n+1 {
			once.Do(func() { close(allIn) })
		}
	}
	v := &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		select {
		case <-allIn:
		case <-time.After(time.Minute):
			return verify.Verdict{}, errors.New("requests never arrived")
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod"}, nil
	}}
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc))

	var wg sync.WaitGroup
	var ok atomic.Int64
	target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"
	for range n {
		wg.Go(func() {
			w := do(p, http.MethodGet, target)
			if w.Code == http.StatusOK && bytes.Equal(w.Body.Bytes(), img.raw) {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if got := v.calls.Load(); got != 1 {
		t.Errorf("Verify calls = %d, want 1", got)
	}
	if got := ok.Load(); got != n {
		t.Errorf("%d of %d requests served the manifest", got, n)
	}
}

func TestSharedVerificationSurvivesClientCancel(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	entered := make(chan struct{})
	release := make(chan struct{})
	var ctxErr atomic.Value
	v := &fakeVerifier{fn: func(ctx context.Context, _ verify.Subject) (verify.Verdict, error) {
		close(entered)
		<-release
		if err := ctx.Err(); err != nil {
			ctxErr.Store(err)
			return verify.Verdict{}, err
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce}, nil
	}}
	vc := newMapVerdicts()
	secondIn := make(chan struct{})
	var once sync.Once
	vc.onGet = func(got int64) {
		// first request's miss, leader's recheck, second request's miss
		if got >= 3 {
			once.Do(func() { close(secondIn) })
		}
	}
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc))
	target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan int)
	go func() {
		r := httptest.NewRequest(http.MethodGet, target, nil).WithContext(ctx)
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		first <- w.Code
	}()
	recv(t, entered, "entered")
	second := make(chan *httptest.ResponseRecorder)
	go func() { second <- do(p, http.MethodGet, target) }()
	recv(t, secondIn, "secondIn")
	// The second request must have joined the verification before the
	// first leaves: the last one leaving would cancel it.
	key := verdictKey(v.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", img.digest)
	waitFor(t, "the second request to join", func() bool { return p.flights.waiters(key) == 2 })
	cancel()
	<-first // the client that left is answered without waiting
	close(release)
	w := recv(t, second, "second")
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), img.raw) {
		t.Fatalf("second client = %d %s", w.Code, w.Body)
	}
	if err := ctxErr.Load(); err != nil {
		t.Fatalf("verification context was cancelled by the first client: %v", err)
	}
	if v.calls.Load() != 1 {
		t.Errorf("Verify calls = %d", v.calls.Load())
	}
}

func TestWarmPaths(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")

	t.Run("GET by digest makes no upstream request", func(t *testing.T) {
		t.Parallel()
		v := allowAll()
		p, s := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
		target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"
		if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
			t.Fatalf("cold GET = %d", w.Code)
		}
		before := s.count()
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			w := do(p, m, target)
			if w.Code != http.StatusOK {
				t.Fatalf("warm %s = %d", m, w.Code)
			}
			checkManifestHeaders(t, w, img)
		}
		if got := s.since(before); len(got) != 0 {
			t.Errorf("warm requests reached the upstream: %v", got)
		}
		if v.calls.Load() != 1 {
			t.Errorf("Verify calls = %d", v.calls.Load())
		}
	})
	t.Run("HEAD by tag makes one upstream HEAD", func(t *testing.T) {
		t.Parallel()
		for _, withManifests := range []bool{true, false} {
			opts := []Option{WithVerdictCache(newMapVerdicts())}
			if withManifests {
				opts = append(opts, WithManifestCache(newMapManifests()))
			}
			p, s := newTestProxy(t, reg.srv.URL, allowAll(), opts...)
			target := "/v2/acme/app/manifests/v1?ns=docker.io"
			if w := do(p, http.MethodHead, target, acceptHeaders(containerdAccept)...); w.Code != http.StatusOK {
				t.Fatalf("cold HEAD = %d", w.Code)
			}
			before := s.count()
			w := do(p, http.MethodHead, target, acceptHeaders(containerdAccept)...)
			if w.Code != http.StatusOK {
				t.Fatalf("warm HEAD = %d", w.Code)
			}
			checkManifestHeaders(t, w, img)
			got := s.since(before)
			if len(got) != 1 || got[0] != "HEAD /v2/acme/app/manifests/v1" {
				t.Errorf("manifest cache %v: warm HEAD by tag made %v, want one HEAD", withManifests, got)
			}
		}
	})
	t.Run("tag TTL avoids the HEAD", func(t *testing.T) {
		t.Parallel()
		p, s := newTestProxy(t, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()),
			WithManifestCache(newMapManifests()), WithTagTTL(time.Hour))
		target := "/v2/acme/app/manifests/v1?ns=docker.io"
		if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
			t.Fatalf("cold GET = %d", w.Code)
		}
		before := s.count()
		if w := do(p, http.MethodGet, target); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), img.raw) {
			t.Fatalf("warm GET = %d", w.Code)
		}
		if got := s.since(before); len(got) != 0 {
			t.Errorf("fresh tag mapping still asked the upstream: %v", got)
		}
	})
}

func TestDrift(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	var deny atomic.Bool
	v := &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		if deny.Load() {
			return verify.Verdict{Allowed: false, Mode: verify.ModeEnforce, Boundary: "prod", Reasons: []string{"signer changed"}}, nil
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod"}, nil
	}}
	p, _ := newTestProxy(t, reg.srv.URL, v)
	target := "/v2/acme/app/manifests/v1?ns=docker.io"
	if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
		t.Fatalf("GET = %d", w.Code)
	}
	deny.Store(true)
	if w := do(p, http.MethodGet, target); w.Code != http.StatusForbidden {
		t.Fatalf("GET after the signature went = %d", w.Code)
	}
	if d := p.decisions.list()[0]; !d.Drift || d.Decision != "deny" {
		t.Errorf("decision = %+v, want drift", d)
	}
	if w := do(p, http.MethodGet, target); w.Code != http.StatusForbidden {
		t.Fatal("still denied")
	}
	if d := p.decisions.list()[0]; d.Drift {
		t.Error("a repeated denial is reported as drift again")
	}
}
