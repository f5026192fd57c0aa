package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullis-oci/portcullis/cache/blobs"
	"github.com/portcullis-oci/portcullis/verify"
)

// testBlobCache is cache/blobs behind the proxy's interface, as the serve
// command wires it.
type testBlobCache struct{ *blobs.Store }

func (c testBlobCache) Create(upstream string, d v1.Hash, size int64) (BlobCacheWriter, error) {
	w, err := c.Store.Create(upstream, d, size)
	if errors.Is(err, blobs.ErrTooLarge) || errors.Is(err, blobs.ErrNoSpace) {
		return nil, fmt.Errorf("%w: %w", ErrBlobCacheFull, err)
	}
	if err != nil {
		return nil, err
	}
	return testBlobCacheWriter{w}, nil
}

type testBlobCacheWriter struct{ *blobs.Writer }

func (w testBlobCacheWriter) Write(b []byte) (int, error) {
	n, err := w.Writer.Write(b)
	if errors.Is(err, blobs.ErrNoSpace) {
		err = fmt.Errorf("%w: %w", ErrBlobCacheFull, err)
	}
	return n, err
}

func newTestBlobCache(t testing.TB, dir string) testBlobCache {
	t.Helper()
	return openTestBlobCache(t, dir, blobs.Options{MaxBytes: 1 << 30})
}

func openTestBlobCache(t testing.TB, dir string, o blobs.Options) testBlobCache {
	t.Helper()
	s, err := blobs.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	<-s.Scanned()
	return testBlobCache{s}
}

// put caches b under docker.io as a verified fetch would.
func (c testBlobCache) put(t *testing.T, b []byte) {
	t.Helper()
	w, err := c.Store.Create("docker.io", sha(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

// heldBackUpstream serves blob, sending its first bytes at once and the
// rest only after send is called (if ever): sent is closed once the first
// bytes are flushed. A test that fails before calling send must not
// leave the handler waiting, or closing the servers would wait for it,
// so send is also called at cleanup.
func heldBackUpstream(t *testing.T, blob []byte, first int) (up *httptest.Server, sent <-chan struct{}, send func()) {
	t.Helper()
	flushed := make(chan struct{})
	rest := make(chan struct{})
	var once sync.Once
	send = func() { once.Do(func() { close(rest) }) }
	up = fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(blob[:first])
		w.(http.Flusher).Flush()
		close(flushed)
		select {
		case <-rest:
			_, _ = w.Write(blob[first:])
		case <-r.Context().Done():
		}
	})
	// After fakeUpstream's: cleanups run last first, so the handler is
	// released before the server waits for it.
	t.Cleanup(send)
	return up, flushed, send
}

// awaitCached waits until bc holds docker.io's blob d: the commit may
// come just after the pull that fetched it has returned.
func awaitCached(t *testing.T, bc testBlobCache, d v1.Hash) {
	t.Helper()
	awaitCond(t, "the blob to be cached", func() bool {
		f, _, ok := bc.Get("docker.io", d)
		if ok {
			f.Close()
		}
		return ok
	})
}

// blobGets counts the upstream GETs of blob d.
func blobGets(s *spy, d v1.Hash) int {
	n := 0
	for _, r := range s.since(0) {
		if strings.HasPrefix(r, "GET ") && strings.HasSuffix(r, "/blobs/"+d.String()) {
			n++
		}
	}
	return n
}

// A blob in the cache is served only where gating opens it: not to
// another repository of the same upstream, and not through another
// upstream, whatever the cache holds.
func TestBlobCacheKeepsGating(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	img := reg.pushImage(t, "acme/app", "v1")
	reg.sign(t, "acme/app", img.digest, k)
	// The same image in a repository nobody pulled a manifest from.
	reg.pushImage(t, "acme/other", "v1")
	eng := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}})
	bc := newTestBlobCache(t, t.TempDir())
	p, s := newTestProxy(t, reg.srv.URL, eng, WithBlobCache(bc))

	if w := do(p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("manifest = %d", w.Code)
	}
	layer := img.layers[0]
	w := do(p, http.MethodGet, blobPath("acme/app", layer))
	if w.Code != http.StatusOK {
		t.Fatalf("allowed blob = %d", w.Code)
	}
	content := w.Body.Bytes()
	if f, _, ok := bc.Get("docker.io", layer); !ok {
		t.Fatal("a verified blob was not cached")
	} else {
		f.Close()
	}

	for _, tc := range []struct{ name, target string }{
		{"another repository", blobPath("acme/other", layer)},
		{"another upstream", "/v2/acme/app/blobs/" + layer.String() + "?ns=ghcr.io"},
	} {
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			w := do(p, m, tc.target)
			if w.Code != http.StatusForbidden {
				t.Errorf("%s %s: %d, want 403", m, tc.name, w.Code)
			}
			if bytes.Contains(w.Body.Bytes(), content[:64]) || w.Header().Get("Docker-Content-Digest") != "" {
				t.Errorf("%s %s: denied answer carries the blob", m, tc.name)
			}
		}
	}
	if v := metricNow(t, p, "portcullis_blob_cache_hits_total"); v != 0 {
		t.Errorf("denied requests counted as %v cache hits", v)
	}

	// Once ghcr.io's gating opens the blob, it is fetched from ghcr.io:
	// docker.io's file is not ghcr.io's.
	before := blobGets(s, layer)
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=ghcr.io"); w.Code != http.StatusOK {
		t.Fatalf("ghcr.io manifest = %d", w.Code)
	}
	if w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+layer.String()+"?ns=ghcr.io"); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), content) {
		t.Fatalf("ghcr.io blob = %d", w.Code)
	}
	if n := blobGets(s, layer) - before; n != 1 {
		t.Errorf("ghcr.io's first pull made %d upstream GETs, want 1 (its own)", n)
	}
}

// A cached blob costs no upstream request, for GET, HEAD, Range and
// If-None-Match alike.
func TestBlobCacheHitServesFromDisk(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	bc := newTestBlobCache(t, t.TempDir())
	p, s := newTestProxy(t, reg.srv.URL, allowAll(), WithBlobCache(bc))
	if w := do(p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("manifest = %d", w.Code)
	}
	layer := img.layers[0]
	w := do(p, http.MethodGet, blobPath("acme/app", layer))
	if w.Code != http.StatusOK {
		t.Fatalf("first pull = %d", w.Code)
	}
	content := w.Body.Bytes()
	before := s.count()

	w = do(p, http.MethodGet, blobPath("acme/app", layer))
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), content) || w.Header().Get("Docker-Content-Digest") != layer.String() {
		t.Fatalf("cached GET = %d, %d bytes, digest %q", w.Code, w.Body.Len(), w.Header().Get("Docker-Content-Digest"))
	}
	etag := w.Header().Get("ETag")
	w = do(p, http.MethodHead, blobPath("acme/app", layer))
	if w.Code != http.StatusOK || w.Body.Len() != 0 || w.Header().Get("Content-Length") != strconv.Itoa(len(content)) {
		t.Errorf("cached HEAD = %d, %d bytes, length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
	w = do(p, http.MethodGet, blobPath("acme/app", layer), "Range", "bytes=10-19")
	if w.Code != http.StatusPartialContent || !bytes.Equal(w.Body.Bytes(), content[10:20]) ||
		w.Header().Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(content)) {
		t.Errorf("cached Range = %d %q %q", w.Code, w.Body.Bytes(), w.Header().Get("Content-Range"))
	}
	w = do(p, http.MethodGet, blobPath("acme/app", layer), "If-None-Match", etag)
	if etag == "" || w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("cached If-None-Match %q = %d", etag, w.Code)
	}
	if got := s.since(before); len(got) != 0 {
		t.Errorf("cached blob requests reached the upstream: %v", got)
	}
	if v := metricNow(t, p, "portcullis_blob_cache_hits_total"); v != 4 {
		t.Errorf("hits = %v, want 4", v)
	}
}

// A file planted in the cache directory under a blob's name, whose
// content is not that blob, is never served: it is fetched upstream.
func TestBlobCachePlantedFileNotServed(t *testing.T) {
	t.Parallel()
	blob := testBlob(100_000, 3)
	d := sha(blob)
	up := fakeUpstream(t, blobBehaviours{d.String(): withLength(blob)}.serve)
	dir := t.TempDir()
	// Learn where the cache keeps docker.io's blobs, then plant there.
	bc0 := newTestBlobCache(t, dir)
	w, err := bc0.Store.Create("docker.io", sha([]byte("x")), 1)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("x"))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	bc0.Close()
	var where string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, _ error) error {
		if !e.IsDir() && strings.Contains(p, string(filepath.Separator)+"blobs"+string(filepath.Separator)) {
			where = filepath.Dir(p)
		}
		return nil
	})
	evil := bytes.Repeat([]byte("E"), len(blob))
	if err := os.WriteFile(filepath.Join(where, d.Hex), evil, 0o600); err != nil {
		t.Fatal(err)
	}

	bc := newTestBlobCache(t, dir)
	p, s := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc))
	got := do(p, http.MethodGet, blobPath("acme/app", d))
	if got.Code != http.StatusOK || !bytes.Equal(got.Body.Bytes(), blob) {
		t.Fatalf("GET = %d, right bytes %v", got.Code, bytes.Equal(got.Body.Bytes(), blob))
	}
	if blobGets(s, d) != 1 {
		t.Errorf("the planted file was served instead of fetching")
	}
}

// blobHerd starts n GETs of target at once and returns each one's body and
// error.
func blobHerd(n int, target string) ([][]byte, []error) {
	bodies, errs := make([][]byte, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A pull stuck on a fetch or a reader that never ends fails
			// within a minute instead of holding the test (and the
			// server's Close) until the package's timeout.
			c := &http.Client{Transport: &http.Transport{}, Timeout: time.Minute}
			defer c.CloseIdleConnections()
			resp, err := c.Get(target)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			bodies[i], errs[i] = io.ReadAll(resp.Body)
			if errs[i] == nil && resp.StatusCode != http.StatusOK {
				errs[i] = fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	return bodies, errs
}

// joinedHerd starts n concurrent pulls of target, waits until they all
// share one fetch of p's, lets the upstream answer (release) and returns
// what each client got.
func joinedHerd(t *testing.T, p *Proxy, n int, target string, release chan struct{}) ([][]byte, []error) {
	t.Helper()
	done := make(chan struct{})
	var bodies [][]byte
	var errs []error
	go func() {
		bodies, errs = blobHerd(n, target)
		close(done)
	}()
	awaitCond(t, "every pull to join the fetch", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_joins_total") == float64(n-1)
	})
	close(release)
	recv(t, done, "done")
	return bodies, errs
}

// holdUpstream serves the blob digest d through behave, after every GET
// waits for release; gets counts the GETs.
func holdUpstream(t *testing.T, d v1.Hash, release <-chan struct{}, gets *atomic.Int64, behave func(call int64) func(http.ResponseWriter, *http.Request)) string {
	t.Helper()
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		call := int64(0)
		if r.Method == http.MethodGet {
			call = gets.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		behave(call)(w, r)
	})
	return up.URL
}

// Concurrent first pulls share one upstream fetch, with the cache and
// without it, and every client gets the blob.
func TestBlobHerdSharesOneFetch(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cached), func(t *testing.T) {
			t.Parallel()
			blob := testBlob(4<<20, 5)
			d := sha(blob)
			release := make(chan struct{})
			var gets atomic.Int64
			url := holdUpstream(t, d, release, &gets, func(int64) func(http.ResponseWriter, *http.Request) { return withLength(blob) })
			opts := []Option{WithBlobGating(false), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory)}
			if cached {
				opts = append(opts, WithBlobCache(newTestBlobCache(t, t.TempDir())))
			}
			p, _ := newTestProxy(t, url, allowAll(), opts...)
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			const n = 20
			bodies, errs := joinedHerd(t, p, n, front.URL+blobPath("acme/app", d), release)
			for i := range n {
				if errs[i] != nil || !bytes.Equal(bodies[i], blob) {
					t.Fatalf("client %d: %v, right bytes %v", i, errs[i], bytes.Equal(bodies[i], blob))
				}
			}
			if g := gets.Load(); g != 1 {
				t.Errorf("%d upstream GETs for %d concurrent pulls, want 1", g, n)
			}
			if v := metricNow(t, p, "portcullis_blob_shared_buffer_bytes"); v != 0 {
				t.Errorf("%v bytes of shared buffers held after the herd", v)
			}
			// Every reader of a cached fetch waits for its commit.
			for _, op := range []string{"create", "write", "commit"} {
				if v := testutil.ToFloat64(p.fetches.cacheErrors.WithLabelValues(op)); v != 0 {
					t.Errorf("a verified blob counted %v cache %s errors", v, op)
				}
			}
		})
	}
}

// A shared fetch whose upstream sends wrong, short or over-long bytes
// aborts every reader and leaves nothing in the cache; the next pull
// fetches again.
func TestBlobHerdBadUpstreamAbortsEveryReader(t *testing.T) {
	t.Parallel()
	blob := testBlob(2<<20, 6)
	tampered := bytes.Clone(blob)
	tampered[len(tampered)-1] ^= 1
	overlong := func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(blob)
		_, _ = w.Write([]byte("and more"))
	}
	for _, tc := range []struct {
		name  string
		bad   func(http.ResponseWriter, *http.Request)
		kind  string
		cache bool
	}{
		{"wrong bytes, cache", withLength(tampered), "blob_digest_mismatch", true},
		{"wrong bytes, memory", withLength(tampered), "blob_digest_mismatch", false},
		{"truncated, cache", cutAfter(blob, len(blob)/2), "blob_stream", true},
		{"over-long, cache", overlong, "blob_too_long", true},
		{"over-long, memory", overlong, "blob_too_long", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := sha(blob)
			release := make(chan struct{})
			var gets atomic.Int64
			url := holdUpstream(t, d, release, &gets, func(call int64) func(http.ResponseWriter, *http.Request) {
				if call == 1 {
					return tc.bad
				}
				return withLength(blob)
			})
			opts := []Option{WithBlobGating(false), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory)}
			var bc testBlobCache
			if tc.cache {
				bc = newTestBlobCache(t, t.TempDir())
				opts = append(opts, WithBlobCache(bc))
			}
			p, _ := newTestProxy(t, url, allowAll(), opts...)
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			const n = 8
			bodies, errs := joinedHerd(t, p, n, front.URL+blobPath("acme/app", d), release)
			for i := range n {
				if errs[i] == nil {
					t.Errorf("client %d read %d bytes without an error", i, len(bodies[i]))
				}
				if len(bodies[i]) >= len(blob) {
					t.Errorf("client %d received %d bytes", i, len(bodies[i]))
				}
			}
			if tc.cache {
				if _, _, ok := bc.Get("docker.io", d); ok {
					t.Fatal("a failed fetch entered the cache")
				}
				if st := bc.Stats(); st.Files != 0 || st.Reserved != 0 {
					t.Errorf("cache after a failed fetch: %+v", st)
				}
			}
			want := fmt.Sprintf(`portcullis_upstream_errors_total{kind=%q,upstream="docker.io"} 1`, tc.kind)
			if w := do(p.AdminHandler(), http.MethodGet, "/metrics"); !strings.Contains(w.Body.String(), want) {
				t.Errorf("/metrics lacks %q", want)
			}

			// The next pull fetches again, and gets the blob.
			bodies, errs = blobHerd(1, front.URL+blobPath("acme/app", d))
			if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
				t.Fatalf("pull after the failure: %v", errs[0])
			}
			if g := gets.Load(); g != 2 {
				t.Errorf("%d upstream GETs, want 2", g)
			}
			if tc.cache {
				// The client has its bytes before the commit ends.
				awaitCond(t, "the good fetch to be cached", func() bool {
					f, _, ok := bc.Get("docker.io", d)
					if ok {
						f.Close()
					}
					return ok
				})
			}
		})
	}
}

// A pull joining a fetch written to the cache reads what is there
// without waiting for the fetch to complete.
func TestBlobCacheJoinerReadsGrowingFile(t *testing.T) {
	t.Parallel()
	blob := testBlob(4<<20, 8)
	d := sha(blob)
	up, half, sendRest := heldBackUpstream(t, blob, len(blob)/2)
	bc := newTestBlobCache(t, t.TempDir())
	p, s := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc))
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	target := front.URL + blobPath("acme/app", d)

	first, err := http.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Body.Close()
	recv(t, half, "half")
	second, err := http.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Body.Close()
	// The second pull gets the first 512 KiB while the upstream holds the
	// rest back. Of the 2 MiB sent, the stream keeps its last chunk (up
	// to 1 MiB) until the digest is checked and may be gathering up to
	// 256 KiB more, so at least 768 KiB are released, not always 1 MiB.
	got := make([]byte, 512<<10)
	readDone := make(chan error, 1)
	go func() { _, err := io.ReadFull(second.Body, got); readDone <- err }()
	// The fetch cannot complete while the upstream holds the rest back,
	// so the deadline only bounds how long a broken build takes to fail;
	// it is long because the race detector on a loaded machine is slow.
	select {
	case err := <-readDone:
		if err != nil || !bytes.Equal(got, blob[:len(got)]) {
			t.Fatalf("joiner read: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the joiner waited for the fetch to complete")
	}
	sendRest()
	for i, resp := range []*http.Response{first, second} {
		b, err := io.ReadAll(resp.Body)
		if i == 1 {
			b = append(got, b...)
		}
		if err != nil || !bytes.Equal(b, blob) {
			t.Fatalf("pull %d: %v", i, err)
		}
	}
	if blobGets(s, d) != 1 {
		t.Errorf("%d upstream GETs, want 1", blobGets(s, d))
	}
	awaitCached(t, bc, d)
}

// In memory, a reader that stops taking bytes does not hold the others
// beyond the stall grace: it is dropped and they finish.
func TestBlobShareDropsStalledReader(t *testing.T) {
	t.Parallel()
	// Long enough that the reading client, paused by the race detector on
	// a loaded machine, is not taken for a stalled one too.
	const grace = time.Second
	blob := testBlob(16<<20, 4)
	d := sha(blob)
	release := make(chan struct{})
	var gets atomic.Int64
	url := holdUpstream(t, d, release, &gets, func(int64) func(http.ResponseWriter, *http.Request) { return withLength(blob) })
	p, _ := newTestProxy(t, url, allowAll(), WithBlobGating(false), WithClientStallGrace(grace), WithBlobShare(1<<20, 8<<20))
	addr := startServe(t, p, ServeConfig{})
	target := blobPath("acme/app", d)
	stalled := dialSmallWindow(t, addr)
	rawRequest(t, stalled, target)
	awaitCond(t, "the stalled pull to start the fetch", func() bool { return gets.Load() == 1 })
	done := make(chan struct{})
	var bodies [][]byte
	var errs []error
	go func() {
		bodies, errs = blobHerd(1, "http://"+addr+target)
		close(done)
	}()
	awaitCond(t, "the second pull to join", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_joins_total") == 1
	})
	close(release)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a stalled reader held the shared fetch")
	}
	if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
		t.Fatalf("reader behind a stalled one: %v", errs[0])
	}
	if v := metricNow(t, p, "portcullis_blob_shared_dropped_total"); v != 1 {
		t.Errorf("dropped = %v, want 1", v)
	}
	if g := gets.Load(); g != 1 {
		t.Errorf("%d upstream GETs, want 1", g)
	}
}

// The memory chunks of a shared fetch are recycled for later fetches, but
// never one a dropped reader may still be sending from: the stalled
// client, once it reads again, gets only bytes of its own blob, while
// another blob streams through recycled chunks meanwhile.
func TestBlobShareRecycledChunksNeverReachADroppedReader(t *testing.T) {
	t.Parallel()
	const grace = time.Second // see TestBlobShareDropsStalledReader
	blobA, blobB := testBlob(16<<20, 4), testBlob(16<<20, 9)
	dA, dB := sha(blobA), sha(blobB)
	release := make(chan struct{})
	var getsA atomic.Int64
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		switch {
		case strings.HasSuffix(r.URL.Path, "/blobs/"+dA.String()):
			if r.Method == http.MethodGet {
				getsA.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			withLength(blobA)(w, r)
		case strings.HasSuffix(r.URL.Path, "/blobs/"+dB.String()):
			withLength(blobB)(w, r)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithClientStallGrace(grace), WithBlobShare(1<<20, 8<<20))
	addr := startServe(t, p, ServeConfig{})
	stalled := dialSmallWindow(t, addr)
	rawRequest(t, stalled, blobPath("acme/app", dA))
	awaitCond(t, "the stalled pull to start the fetch", func() bool { return getsA.Load() == 1 })
	done := make(chan struct{})
	var bodies [][]byte
	var errs []error
	go func() {
		bodies, errs = blobHerd(1, "http://"+addr+blobPath("acme/app", dA))
		close(done)
	}()
	awaitCond(t, "the second pull to join", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_joins_total") == 1
	})
	close(release)
	recv(t, done, "done")
	if errs[0] != nil || !bytes.Equal(bodies[0], blobA) {
		t.Fatalf("reader behind a stalled one: %v", errs[0])
	}
	if v := metricNow(t, p, "portcullis_blob_shared_dropped_total"); v != 1 {
		t.Fatalf("dropped = %v, want 1", v)
	}
	// Blob B now streams through chunks from the pool, twice over. The
	// pool is the process's, so B goes through a proxy of its own whose
	// stall grace is the default: on a loaded machine (-race) one of its
	// readers may well pause for the short grace above, and being dropped
	// for it is not what this test is about.
	pB, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobShare(1<<20, 8<<20))
	addrB := startServe(t, pB, ServeConfig{})
	for range 2 {
		bodies, errs = blobHerd(2, "http://"+addrB+blobPath("acme/app", dB))
		for i := range bodies {
			if errs[i] != nil || !bytes.Equal(bodies[i], blobB) {
				t.Fatalf("blob B, reader %d: %v", i, errs[i])
			}
		}
	}
	_ = stalled.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, _ := io.ReadAll(stalled)
	head, body, ok := bytes.Cut(got, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		t.Fatalf("stalled client got %q", got[:min(len(got), 200)])
	}
	if len(body) >= len(blobA) {
		t.Fatalf("the dropped client got all %d bytes", len(body))
	}
	for i := range body {
		if body[i] != blobA[i] {
			t.Fatalf("the dropped client got a wrong byte at offset %d of %d received", i, len(body))
		}
	}
}

// The memory budget of shared fetches (blob_share.max_bytes) is a hard
// bound past a fetch's two free chunks: a fetch whose only reader takes
// nothing grows to exactly what the budget allows and no further, and
// gives it all back once the reader has gone.
func TestBlobShareMemoryBudget(t *testing.T) {
	t.Parallel()
	blob := testBlob(16<<20, 5)
	d := sha(blob)
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		withLength(blob)(w, r)
	})
	// Three chunks: the two every fetch may hold, and one from the budget.
	const budget = 3 * shareChunk
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithClientStallGrace(time.Minute), WithBlobShare(8<<20, budget))
	addr := startServe(t, p, ServeConfig{})
	held := func() float64 { return metricNow(t, p, "portcullis_blob_shared_buffer_bytes") }
	stalled := dialSmallWindow(t, addr)
	rawRequest(t, stalled, blobPath("acme/app", d))
	awaitCond(t, "the fetch to fill the budget", func() bool { return held() == budget })
	time.Sleep(300 * time.Millisecond)
	if h := held(); h != budget {
		t.Fatalf("a fetch behind a stalled reader holds %v bytes, want the budget of %d", h, budget)
	}
	_ = stalled.Close()
	awaitCond(t, "the buffers to be given back", func() bool { return held() == 0 })
}

// gatedCommitCache holds every Commit until gate is closed.
type gatedCommitCache struct {
	testBlobCache
	gate chan struct{}
}

type gatedWriter struct {
	BlobCacheWriter
	gate chan struct{}
}

func (w gatedWriter) Commit() error { <-w.gate; return w.BlobCacheWriter.Commit() }

func (c gatedCommitCache) Create(upstream string, d v1.Hash, size int64) (BlobCacheWriter, error) {
	w, err := c.testBlobCache.Create(upstream, d, size)
	if err != nil {
		return nil, err
	}
	return gatedWriter{w, c.gate}, nil
}

// Readers that have every byte and hang up before the blob is committed
// do not cancel the commit, and a pull meanwhile joins the fetch instead
// of fetching again.
func TestBlobCacheCommitOutlivesReaders(t *testing.T) {
	t.Parallel()
	blob := testBlob(1<<20, 2)
	d := sha(blob)
	up := fakeUpstream(t, blobBehaviours{d.String(): withLength(blob)}.serve)
	bc := gatedCommitCache{newTestBlobCache(t, t.TempDir()), make(chan struct{})}
	p, s := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc))
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	var once sync.Once
	release := func() { once.Do(func() { close(bc.gate) }) }
	t.Cleanup(release)
	target := front.URL + blobPath("acme/app", d)

	bodies, errs := blobHerd(1, target) // hangs up once it has the body
	if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
		t.Fatalf("first pull: %v", errs[0])
	}
	awaitCond(t, "the first reader to leave", func() bool {
		p.fetches.mu.Lock()
		defer p.fetches.mu.Unlock()
		for _, fl := range p.fetches.flights {
			return fl.readerCount() == 0
		}
		return false
	})
	done := make(chan struct{})
	go func() {
		bodies, errs = blobHerd(1, target)
		close(done)
	}()
	awaitCond(t, "the second pull to join", func() bool { return metricNow(t, p, "portcullis_blob_shared_joins_total") == 1 })
	release()
	recv(t, done, "done")
	if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
		t.Fatalf("second pull: %v", errs[0])
	}
	if n := blobGets(s, d); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
	awaitCond(t, "the blob to be committed", func() bool {
		f, _, ok := bc.Get("docker.io", d)
		if ok {
			f.Close()
		}
		return ok
	})
}

// Zero turns sharing (buffer) or the budget (memory) down to nothing and
// is a valid setting; only a negative one is refused.
func TestBlobShareOptionBounds(t *testing.T) {
	t.Parallel()
	up := []Upstream{{Name: "r", URL: "https://r.example"}}
	for _, tc := range []struct {
		buffer, memory int64
		ok             bool
	}{{0, 0, true}, {1 << 20, 0, true}, {0, 1 << 20, true}, {-1, 0, false}, {0, -1, false}} {
		_, err := New(up, allowAll(), WithBlobShare(tc.buffer, tc.memory))
		if (err == nil) != tc.ok {
			t.Errorf("WithBlobShare(%d, %d): error %v, want ok = %v", tc.buffer, tc.memory, err, tc.ok)
		}
	}
}

// An upstream that answers a shared fetch's plain GET with anything but a
// 200 (here a 304 nobody asked for) has its answer refused by name and
// counted; no client gets a body.
func TestBlobShareRefusesUnaskedStatus(t *testing.T) {
	t.Parallel()
	blob := testBlob(1<<20, 6)
	d := sha(blob)
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	})
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobShare(1<<20, 8<<20))
	w := do(p, http.MethodGet, blobPath("acme/app", d))
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "answered 304 for a blob") {
		t.Fatalf("GET = %d %q, want 502 naming the 304", w.Code, w.Body.String())
	}
	want := `portcullis_upstream_errors_total{kind="status_other",upstream="docker.io"} 1`
	if w := do(p.AdminHandler(), http.MethodGet, "/metrics"); !strings.Contains(w.Body.String(), want) {
		t.Errorf("/metrics lacks %q", want)
	}
}

// stubbornBody hands over the first `after` bytes of a real upstream body,
// then blocks until gate closes whatever the request's context says, as an
// upstream (or a proxy before it) that is slow to notice a hang-up does.
type stubbornBody struct {
	io.ReadCloser
	left      int64
	ctx       context.Context
	cancelled chan struct{}
	gate      <-chan struct{}
}

func (b *stubbornBody) Read(p []byte) (int, error) {
	if b.left > 0 {
		n, err := b.ReadCloser.Read(p[:min(int64(len(p)), b.left)])
		b.left -= int64(n)
		return n, err
	}
	<-b.ctx.Done()
	close(b.cancelled)
	<-b.gate
	return 0, io.ErrUnexpectedEOF
}

type stubbornTransport struct {
	rt        http.RoundTripper
	d         v1.Hash
	gets      atomic.Int64
	cancelled chan struct{}
	gate      chan struct{}
}

func (s *stubbornTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+s.d.String()) {
		return resp, err
	}
	if s.gets.Add(1) == 1 {
		resp.Body = &stubbornBody{ReadCloser: resp.Body, left: 1 << 20, ctx: r.Context(), cancelled: s.cancelled, gate: s.gate}
	}
	return resp, nil
}

// When its last reader hangs up, a fetch that has not delivered the blob
// leaves the table at once, not when its upstream stream returns: a pull
// arriving meanwhile starts a fetch of its own and gets the blob instead
// of joining the dead one and being aborted with it.
func TestBlobShareAbandonedFetchIsNotJoined(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cached), func(t *testing.T) {
			t.Parallel()
			blob := testBlob(8<<20, 7)
			d := sha(blob)
			up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
					w.WriteHeader(http.StatusNotFound)
					return
				}
				w.Header().Set("Content-Type", "application/octet-stream")
				withLength(blob)(w, r)
			})
			st := &stubbornTransport{rt: http.DefaultTransport.(*http.Transport).Clone(), d: d, cancelled: make(chan struct{}), gate: make(chan struct{})}
			opts := []Option{WithBlobGating(false), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory), WithTransport(st)}
			if cached {
				opts = append(opts, WithBlobCache(newTestBlobCache(t, t.TempDir())))
			}
			p, _ := newTestProxy(t, up.URL, allowAll(), opts...)
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			released := false
			release := func() {
				if !released {
					released = true
					close(st.gate)
				}
			}
			t.Cleanup(release)
			target := front.URL + blobPath("acme/app", d)

			// The first pull reads a little and hangs up.
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			recv(t, st.cancelled, "the abandoned fetch's cancellation")

			// Its stream has not returned: the next pull must not wait for it.
			done := make(chan struct{})
			var bodies [][]byte
			var errs []error
			go func() {
				bodies, errs = blobHerd(1, target)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				release()
				<-done
				t.Fatalf("the next pull waited for the abandoned fetch: %v", errs[0])
			}
			if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
				t.Fatalf("next pull: %v, right bytes %v", errs[0], bytes.Equal(bodies[0], blob))
			}
			if g := st.gets.Load(); g != 2 {
				t.Errorf("%d upstream GETs, want 2 (the abandoned one and the next pull's)", g)
			}
			if v := metricNow(t, p, "portcullis_blob_shared_joins_total"); v != 0 {
				t.Errorf("%v joins, want 0", v)
			}
		})
	}
}

// A first pull of a large blob, dropped soon after it starts, evicts
// from the cache about what it downloaded, not the blob's declared size:
// a client cannot flush the cache by starting pulls it abandons.
func TestBlobCacheAbandonedPullKeepsTheCache(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	blob := testBlob(14*mib, 6)
	d := sha(blob)
	// The rest is never sent: the fetch ends when the client leaves.
	up, sent, _ := heldBackUpstream(t, blob, 2*mib)
	bc := openTestBlobCache(t, t.TempDir(), blobs.Options{MaxBytes: 16 * mib, ClaimStep: mib})
	s := bc.Store
	// Twelve cached blobs of 1 MiB: 12 of the 16 MiB.
	var kept []v1.Hash
	for i := range 12 {
		b := testBlob(mib, byte(i))
		bc.put(t, b)
		kept = append(kept, sha(b))
	}
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc))
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)

	resp, err := http.Get(front.URL + blobPath("acme/app", d))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, sent, "the first 2 MiB")
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	awaitCond(t, "the abandoned fetch to give back its room", func() bool { return s.Stats().Reserved == 0 })

	st := s.Stats()
	// 2 MiB written (and a step claimed past it) fit beside 12 MiB with
	// at most one eviction; claiming the declared 14 MiB up front evicted
	// ten files.
	if st.EvictedSize > 1 || st.Files < 11 {
		t.Errorf("cache after an abandoned 14 MiB pull: %+v, want at most one file evicted", st)
	}
	for _, k := range kept[2:] {
		if f, _, ok := bc.Get("docker.io", k); !ok {
			t.Errorf("%s evicted", k)
		} else {
			f.Close()
		}
	}
	if f, _, ok := bc.Get("docker.io", d); ok {
		f.Close()
		t.Error("the abandoned blob was cached")
	}
}

// A cache that finds no room for the rest of a blob mid-stream (the disk
// filled from elsewhere) is a refusal, not a failure: the pull gets every
// byte from memory, nothing is cached and no cache error is counted.
func TestBlobCacheRoomGoneMidStream(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	blob := testBlob(8*mib, 9)
	d := sha(blob)
	var free atomic.Int64
	free.Store(1 << 40)
	up, half, sendRest := heldBackUpstream(t, blob, 2*mib)
	bc := openTestBlobCache(t, t.TempDir(), blobs.Options{MaxBytes: 64 * mib, MinFreeBytes: 1 << 30, ClaimStep: mib,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil }})
	s := bc.Store
	core, logs := observer.New(zapcore.WarnLevel)
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc), WithLogger(zap.New(core)))
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)

	resp, err := http.Get(front.URL + blobPath("acme/app", d))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	recv(t, half, "the first 2 MiB")
	free.Store(1<<30 + mib/2) // half a step above the floor
	sendRest()
	b, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(b, blob) {
		t.Fatalf("pull: %v, %d bytes, right bytes %v", err, len(b), bytes.Equal(b, blob))
	}
	if st := s.Stats(); st.Refused != 1 || st.Files != 0 || st.Reserved != 0 {
		t.Errorf("cache %+v, want one refusal, no file, nothing held", st)
	}
	if v := testutil.ToFloat64(p.fetches.cacheErrors.WithLabelValues("write")); v != 0 {
		t.Errorf("a refusal counted as %v cache write errors", v)
	}
	if n := logs.FilterMessage("blob cache: no room left for the rest of a blob; it is served from memory without caching it").Len(); n != 1 {
		t.Errorf("%d log lines for the refusal, want 1", n)
	}
	if f, _, ok := bc.Get("docker.io", d); ok {
		f.Close()
		t.Error("a refused blob was cached")
	}
}
