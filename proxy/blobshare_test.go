package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
)

// repoUpstream serves blob d only in the repositories of have (404 in any
// other), after each GET of it waits for release when hold says so; gets
// counts the GETs of d, and getsIn and headsIn the GETs and HEADs by
// repository.
type repoUpstream struct {
	url   string
	gets  atomic.Int64
	mu    sync.Mutex
	byReq map[string]int64 // "METHOD repo"
}

func (ru *repoUpstream) count(method, repo string) {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	ru.byReq[method+" "+repo]++
}

func (ru *repoUpstream) getsIn(repo string) int64  { return ru.countOf(http.MethodGet, repo) }
func (ru *repoUpstream) headsIn(repo string) int64 { return ru.countOf(http.MethodHead, repo) }

func (ru *repoUpstream) countOf(method, repo string) int64 {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	return ru.byReq[method+" "+repo]
}

func newRepoUpstream(t *testing.T, d v1.Hash, blob []byte, have []string, release <-chan struct{}, hold func(repo string) bool) *repoUpstream {
	t.Helper()
	ru := &repoUpstream{byReq: map[string]int64{}}
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		suffix := "/blobs/" + d.String()
		if !strings.HasSuffix(r.URL.Path, suffix) {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		repo := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), suffix)
		ru.count(r.Method, repo)
		if r.Method == http.MethodGet {
			ru.gets.Add(1)
			if hold != nil && hold(repo) {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
		}
		for _, h := range have {
			if h == repo {
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
				if r.Method == http.MethodGet {
					_, _ = w.Write(blob)
				}
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
	})
	ru.url = up.URL
	return ru
}

// An upstream answering a 200 with no body for a blob that is not empty
// gives the client no complete answer, shared or not: an empty blob has
// no last bytes to hold back, so only the finished digest check may end
// the response. The empty blob itself is served.
func TestBlobShareEmptyAnswerIsNotTheBlob(t *testing.T) {
	t.Parallel()
	blob := testBlob(1<<20, 3)
	d, empty := sha(blob), sha(nil)
	for _, mode := range []string{"alone", "memory", "cache"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Header().Set("Content-Length", "0")
			})
			opts := []Option{WithBlobGating(false)}
			var bc testBlobCache
			switch mode {
			case "memory":
				opts = append(opts, WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory))
			case "cache":
				bc = newTestBlobCache(t, t.TempDir())
				opts = append(opts, WithBlobCache(bc))
			}
			p, _ := newTestProxy(t, up.URL, allowAll(), opts...)
			addr := startServe(t, p, ServeConfig{})
			c := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
			t.Cleanup(c.CloseIdleConnections)

			resp, err := c.Get("http://" + addr + blobPath("acme/app", d))
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && rerr == nil {
					t.Fatalf("an empty answer for %s reached the client as a complete 200 (%d bytes)", d, len(body))
				}
			}
			if bc.Store != nil {
				if f, _, ok := bc.Get("docker.io", d); ok {
					f.Close()
					t.Error("the empty answer was cached as the blob")
				}
			}

			resp, err = c.Get("http://" + addr + blobPath("acme/app", empty))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || len(body) != 0 {
				t.Fatalf("the empty blob: %d, %d bytes, %v", resp.StatusCode, len(body), err)
			}
		})
	}
}

// A blob no verified manifest opened in the requesting repository (blob
// gating off, or a warn boundary's would-be denial) is the upstream's to
// authorize there. Registries scope blobs to repositories, so the blob
// cache does not hand one repository's blob to another on the strength of
// its digest: the hit is served only once a HEAD in the requesting
// repository shows the upstream has it, and then without a GET.
func TestBlobCacheUngatedHitAsksTheUpstream(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	for _, tc := range []struct {
		name string
		opts []Option
		v    Verifier
	}{
		{"gating off", []Option{WithBlobGating(false)}, allowAll()},
		{"warn boundary", nil, newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("rollout", verify.ModeWarn, k)}})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			blob := testBlob(2<<20, 11)
			d := sha(blob)
			up := newRepoUpstream(t, d, blob, []string{"acme/secret", "acme/open"}, nil, nil)
			bc := newTestBlobCache(t, t.TempDir())
			p, _ := newTestProxy(t, up.url, tc.v, append(tc.opts, WithBlobCache(bc))...)

			if w := do(p, http.MethodGet, blobPath("acme/secret", d)); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), blob) {
				t.Fatalf("acme/secret = %d", w.Code)
			}
			awaitCached(t, bc, d)

			// The upstream does not serve it in acme/app: neither does
			// the cache.
			for _, m := range []string{http.MethodGet, http.MethodHead} {
				w := do(p, m, blobPath("acme/app", d))
				if w.Code != http.StatusNotFound || bytes.Contains(w.Body.Bytes(), blob[:64]) {
					t.Errorf("%s acme/app = %d, want 404 without the blob", m, w.Code)
				}
			}
			if v := metricNow(t, p, "portcullis_blob_cache_hits_total"); v != 0 {
				t.Errorf("%v cache hits for a repository the upstream does not serve the blob in", v)
			}

			// It does serve it in acme/open: a HEAD there, then the
			// cached bytes.
			gets := up.gets.Load()
			w := do(p, http.MethodGet, blobPath("acme/open", d))
			if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), blob) {
				t.Fatalf("acme/open = %d", w.Code)
			}
			if g, h := up.gets.Load()-gets, up.headsIn("acme/open"); g != 0 || h != 1 {
				t.Errorf("acme/open from the cache: %d GETs and %d HEADs upstream, want 0 and 1", g, h)
			}
			if v := metricNow(t, p, "portcullis_blob_cache_hits_total"); v != 1 {
				t.Errorf("cache hits = %v, want 1", v)
			}
		})
	}
}

// A gated blob is read from the cache whichever gated repository filled
// it, without any upstream request: a verified manifest in the requesting
// repository names it.
func TestBlobCacheGatedHitAcrossRepositories(t *testing.T) {
	t.Parallel()
	blob := testBlob(2<<20, 12)
	d := sha(blob)
	up := newRepoUpstream(t, d, blob, []string{"acme/a", "acme/b"}, nil, nil)
	bc := newTestBlobCache(t, t.TempDir())
	p, s := newTestProxy(t, up.url, allowAll(), WithBlobCache(bc))
	for _, repo := range []string{"acme/a", "acme/b"} {
		p.blobs.add(blobKey("docker.io", repo, d), blobGrant{size: int64(len(blob))})
	}
	if w := do(p, http.MethodGet, blobPath("acme/a", d)); w.Code != http.StatusOK {
		t.Fatalf("acme/a = %d", w.Code)
	}
	awaitCached(t, bc, d)
	before := s.count()
	if w := do(p, http.MethodGet, blobPath("acme/b", d)); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), blob) {
		t.Fatalf("acme/b = %d", w.Code)
	}
	if n := s.count() - before; n != 0 {
		t.Errorf("a gated cache hit made %d upstream requests", n)
	}
}

// Without gating a pull shares a fetch only with pulls of the same
// repository: one of another repository, which the upstream may not
// serve the blob in, is never handed the bytes of a fetch made there.
func TestBlobShareUngatedNotJoinedAcrossRepositories(t *testing.T) {
	t.Parallel()
	blob := testBlob(4<<20, 13)
	d := sha(blob)
	release := make(chan struct{})
	up := newRepoUpstream(t, d, blob, []string{"acme/secret"}, release, func(repo string) bool { return repo == "acme/secret" })
	p, _ := newTestProxy(t, up.url, allowAll(), WithBlobGating(false), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory))
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	done := make(chan struct{})
	var bodies [][]byte
	var errs []error
	go func() {
		bodies, errs = blobHerd(1, front.URL+blobPath("acme/secret", d))
		close(done)
	}()
	awaitCond(t, "acme/secret's fetch to start", func() bool { return up.getsIn("acme/secret") == 1 })
	w := do(p, http.MethodGet, blobPath("acme/app", d))
	if w.Code != http.StatusNotFound || bytes.Contains(w.Body.Bytes(), blob[:64]) {
		t.Errorf("acme/app during acme/secret's fetch = %d, want 404 without the blob", w.Code)
	}
	if v := metricNow(t, p, "portcullis_blob_shared_joins_total"); v != 0 {
		t.Errorf("%v joins across repositories", v)
	}
	close(release)
	recv(t, done, "acme/secret's pull")
	if errs[0] != nil || !bytes.Equal(bodies[0], blob) {
		t.Fatalf("acme/secret: %v", errs[0])
	}
}

// A gated pull that joined a fetch opened for another repository is not
// failed by that repository: when the upstream refuses the blob there, or
// its length is not what the joiner's own verified manifest declares, the
// joiner fetches on its own and gets its own repository's answer.
func TestBlobShareJoinerFetchesAloneWhenTheAnswerCouldDiffer(t *testing.T) {
	t.Parallel()
	blob := testBlob(4<<20, 14)
	d := sha(blob)
	size := int64(len(blob))
	for _, tc := range []struct {
		name                 string
		have                 []string
		leaderSize, joinSize int64
		leaderCode, joinCode int
	}{
		// acme/gone lacks the blob (deleted after its manifest was
		// verified): acme/app still gets it.
		{"leader's repository refuses", []string{"acme/app"}, size, size, http.StatusNotFound, http.StatusOK},
		// acme/app's manifest declares another length: its pull is
		// refused, as without sharing, and acme/gone's is served.
		{"joiner's length differs", []string{"acme/app", "acme/gone"}, size, size + 1, http.StatusOK, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			up := newRepoUpstream(t, d, blob, tc.have, release, func(repo string) bool { return repo == "acme/gone" })
			p, _ := newTestProxy(t, up.url, allowAll(), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory))
			p.blobs.add(blobKey("docker.io", "acme/gone", d), blobGrant{size: tc.leaderSize})
			p.blobs.add(blobKey("docker.io", "acme/app", d), blobGrant{size: tc.joinSize})
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			type answer struct {
				code int
				body []byte
			}
			get := func(repo string, out chan<- answer) {
				resp, err := http.Get(front.URL + blobPath(repo, d))
				if err != nil {
					out <- answer{code: -1}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					resp.StatusCode = -2
				}
				out <- answer{resp.StatusCode, b}
			}
			leader, joiner := make(chan answer, 1), make(chan answer, 1)
			go get("acme/gone", leader)
			awaitCond(t, "acme/gone's fetch to start", func() bool { return up.getsIn("acme/gone") == 1 })
			go get("acme/app", joiner)
			awaitCond(t, "acme/app to join", func() bool { return metricNow(t, p, "portcullis_blob_shared_joins_total") == 1 })
			close(release)
			for _, c := range []struct {
				who  string
				ch   chan answer
				want int
			}{{"acme/gone", leader, tc.leaderCode}, {"acme/app", joiner, tc.joinCode}} {
				a := recv(t, c.ch, c.who)
				if a.code != c.want {
					t.Errorf("%s = %d, want %d", c.who, a.code, c.want)
				}
				if a.code == http.StatusOK && !bytes.Equal(a.body, blob) {
					t.Errorf("%s: wrong bytes", c.who)
				}
				if a.code != http.StatusOK && bytes.Contains(a.body, blob[:64]) {
					t.Errorf("%s: a refusal carries the blob", c.who)
				}
			}
			if g := up.getsIn("acme/app"); g != 1 {
				t.Errorf("acme/app fetched %d times on its own, want 1", g)
			}
			if v := metricNow(t, p, "portcullis_blob_shared_late_total"); v != 1 {
				t.Errorf("pulls that went alone = %v, want 1", v)
			}
		})
	}
}

// A fetch whose every reader was dropped for not reading ends at once:
// the dropped clients' handlers leave only when their stalled writes
// fail (the client idle timeout), and the upstream connection is not
// held for them until then.
func TestBlobShareEveryReaderDroppedEndsTheFetch(t *testing.T) {
	t.Parallel()
	const grace = time.Second // see TestBlobShareDropsStalledReader
	blob := testBlob(32<<20, 15)
	d := sha(blob)
	var gets atomic.Int64
	ended := make(chan struct{})
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) || r.Method != http.MethodGet {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		gets.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		withLength(blob)(w, r)
		close(ended)
	})
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithClientStallGrace(grace), WithBlobShare(1<<20, 8<<20))
	addr := startServe(t, p, ServeConfig{ClientIdleTimeout: 5 * time.Minute})
	stalled := dialSmallWindow(t, addr)
	rawRequest(t, stalled, blobPath("acme/app", d))
	awaitCond(t, "the stalled reader to be dropped", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_dropped_total") == 1
	})
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream stream of a fetch nobody reads is still open")
	}
	awaitCond(t, "the shared buffers to be freed", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_buffer_bytes") == 0
	})
	if g := gets.Load(); g != 1 {
		t.Errorf("%d upstream GETs, want 1", g)
	}
}

// A fetch whose stream reports success short of the blob's length fails
// its readers instead of ending their responses early. The upstream
// client never does that; finish and wait each guard against it, so this
// fails only when both guards are gone.
func TestBlobFlightShortSuccessFails(t *testing.T) {
	t.Parallel()
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll(), WithBlobShare(DefaultBlobShareBuffer, DefaultBlobShareMemory))
	f := p.fetches
	fl, rd, leader := f.join(t.Context(), "k", "acme/app")
	if !leader {
		t.Fatal("not the leader")
	}
	fl.size = 10
	close(fl.ready)
	if _, err := (&memorySink{fl: fl, ctx: t.Context()}).Write([]byte("01234")); err != nil {
		t.Fatal(err)
	}
	f.finish(fl, nil)
	var got bytes.Buffer
	n, err := fl.readTo(t.Context(), rd, &got)
	if err == nil || n != 5 {
		t.Fatalf("reader of a fetch that ended at 5 of 10 bytes: %d bytes, %v", n, err)
	}
	f.leave(fl, rd)
}

// The fastest reader of a memory fetch runs exactly buffer_bytes ahead of
// a reader that has stopped (within the stall grace): the fetch then holds
// that many bytes of chunks, not one chunk fewer or more.
func TestBlobShareBufferBound(t *testing.T) {
	t.Parallel()
	const buffer = 4 * shareChunk
	blob := testBlob(32<<20, 16)
	d := sha(blob)
	release := make(chan struct{})
	var gets atomic.Int64
	url := holdUpstream(t, d, release, &gets, func(int64) func(http.ResponseWriter, *http.Request) { return withLength(blob) })
	p, _ := newTestProxy(t, url, allowAll(), WithBlobGating(false), WithClientStallGrace(5*time.Minute), WithBlobShare(buffer, 64<<20))
	addr := startServe(t, p, ServeConfig{ClientIdleTimeout: 5 * time.Minute})
	target := blobPath("acme/app", d)
	stalled := dialSmallWindow(t, addr)
	rawRequest(t, stalled, target)
	awaitCond(t, "the stalled pull to start the fetch", func() bool { return gets.Load() == 1 })
	var got atomic.Int64
	done := make(chan []byte, 1)
	go func() {
		resp, err := http.Get("http://" + addr + target)
		if err != nil {
			done <- nil
			return
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		buf := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			got.Add(int64(n))
			if err != nil {
				break
			}
		}
		done <- b.Bytes()
	}()
	awaitCond(t, "the second pull to join", func() bool {
		return metricNow(t, p, "portcullis_blob_shared_joins_total") == 1
	})
	close(release)
	// Settled: the fast reader has taken nothing new for a while.
	last, still := int64(-1), 0
	awaitCond(t, "the fast reader to wait for the stalled one", func() bool {
		time.Sleep(50 * time.Millisecond)
		if n := got.Load(); n > 0 && n == last {
			still++
		} else {
			last, still = n, 0
		}
		return still >= 10
	})
	if v := metricNow(t, p, "portcullis_blob_shared_buffer_bytes"); v != buffer {
		t.Errorf("a fetch held back by a stopped reader holds %v bytes, want buffer_bytes %d", v, buffer)
	}
	if got.Load() >= int64(len(blob)) {
		t.Fatal("the fast reader was not held back")
	}
	stalled.Close()
	if b := recv(t, done, "the fast reader"); !bytes.Equal(b, blob) {
		t.Errorf("the fast reader got %d bytes, not the blob", len(b))
	}
}
