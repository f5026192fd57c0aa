package proxy

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// failingCache is a blob cache whose files fail to take more than failAt
// bytes, as a full or broken disk does. With sendfile false its writers
// cannot be opened again, so readers copy with ReadAt instead of sending
// the file.
type failingCache struct {
	testBlobCache
	failAt   int64
	sendfile bool
	failures *atomic.Int64
}

type failingWriter struct {
	BlobCacheWriter
	c       failingCache
	written int64
}

// readAtOnly hides a writer's OpenReader.
type readAtOnly struct{ BlobCacheWriter }

func (w *failingWriter) Write(b []byte) (int, error) {
	if room := w.c.failAt - w.written; int64(len(b)) > room {
		n, _ := w.BlobCacheWriter.Write(b[:max(room, 0)])
		w.written += int64(n)
		w.c.failures.Add(1)
		return n, fmt.Errorf("write blob file: %w", syscall.ENOSPC)
	}
	n, err := w.BlobCacheWriter.Write(b)
	w.written += int64(n)
	return n, err
}

func (w *failingWriter) OpenReader() (*os.File, error) {
	return w.BlobCacheWriter.(blobFileOpener).OpenReader()
}

func (c failingCache) Create(upstream string, d v1.Hash, size int64) (BlobCacheWriter, error) {
	w, err := c.testBlobCache.Create(upstream, d, size)
	if err != nil {
		return nil, err
	}
	fw := &failingWriter{BlobCacheWriter: w, c: c}
	if c.sendfile {
		return fw, nil
	}
	return readAtOnly{fw}, nil
}

// A cache file that cannot be written (disk full, I/O error) must not
// fail the pulls sharing its fetch: the bytes already on disk are read
// from it, the rest is shared from memory, every client gets the blob,
// nothing is cached, and the failure is counted. Wrong bytes from the
// upstream still abort every reader after the switch.
func TestBlobCacheWriteFailureServesFromMemory(t *testing.T) {
	t.Parallel()
	blob := testBlob(6<<20, 9)
	tampered := bytes.Clone(blob)
	tampered[len(tampered)-1] ^= 1
	for _, tc := range []struct {
		name     string
		failAt   int64
		sendfile bool
		body     []byte
	}{
		{"sendfile, mid-blob", 3<<20 + 12345, true, blob},
		{"read back, mid-blob", 3<<20 + 12345, false, blob},
		{"first byte", 0, true, blob},
		{"past the memory budget", 1<<20 + 7, true, blob},
		{"wrong bytes after the switch", 2<<20 + 1, true, tampered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := sha(blob)
			release := make(chan struct{})
			var gets atomic.Int64
			url := holdUpstream(t, d, release, &gets, func(int64) func(http.ResponseWriter, *http.Request) { return withLength(tc.body) })
			var failures atomic.Int64
			bc := failingCache{newTestBlobCache(t, t.TempDir()), tc.failAt, tc.sendfile, &failures}
			// A memory budget smaller than the blob: the readers hold
			// the writer back once it has switched to memory.
			p, _ := newTestProxy(t, url, allowAll(), WithBlobGating(false), WithBlobCache(bc), WithBlobShare(2<<20, 4<<20))
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			const n = 6
			bodies, errs := joinedHerd(t, p, n, front.URL+blobPath("acme/app", d), release)
			if failures.Load() != 1 {
				t.Fatalf("the cache file failed %d times, want once", failures.Load())
			}
			for i := range n {
				if bytes.Equal(tc.body, blob) {
					if errs[i] != nil || !bytes.Equal(bodies[i], blob) {
						t.Fatalf("client %d: %v, %d bytes, right bytes %v", i, errs[i], len(bodies[i]), bytes.Equal(bodies[i], blob))
					}
				} else if errs[i] == nil && len(bodies[i]) == len(blob) {
					t.Fatalf("client %d got a complete body of wrong bytes", i)
				}
			}
			if g := gets.Load(); g != 1 {
				t.Errorf("%d upstream GETs, want 1", g)
			}
			if bytes.Equal(tc.body, blob) {
				// Bytes sent from the file and from memory both count.
				awaitCond(t, "every client's bytes to be counted", func() bool {
					return metricNow(t, p, "portcullis_blob_bytes_total") == float64(n*len(blob))
				})
			}
			if v := testutil.ToFloat64(p.fetches.cacheErrors.WithLabelValues("write")); v != 1 {
				t.Errorf("blob cache write errors %v, want 1", v)
			}
			if v := testutil.ToFloat64(p.fetches.cacheErrors.WithLabelValues("commit")); v != 0 {
				t.Errorf("a failed file was committed (%v commit errors)", v)
			}
			if f, _, ok := bc.Get("docker.io", d); ok {
				f.Close()
				t.Fatal("a blob whose file failed is in the cache")
			}
			awaitCond(t, "the shared buffers to be freed", func() bool {
				return metricNow(t, p, "portcullis_blob_shared_buffer_bytes") == 0
			})
			// The reservation went back: the next pull can cache it.
			awaitCond(t, "the failed file's reservation to be released", func() bool {
				return bc.Stats().Reserved == 0
			})
		})
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// Every pull of a blob being cached opens the file for itself (to send
// it with sendfile where the connection allows) and must close it: a
// descriptor left behind per pull is how a busy proxy runs out of them.
func TestBlobCacheReadersCloseTheirFiles(t *testing.T) {
	const n = 24
	blobs := blobBehaviours{}
	var digests []v1.Hash
	for i := range n {
		b := testBlob(64<<10+i, byte(i))
		d := sha(b)
		blobs[d.String()] = withLength(b)
		digests = append(digests, d)
	}
	up := fakeUpstream(t, blobs.serve)
	bc := newTestBlobCache(t, t.TempDir())
	p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithBlobCache(bc))
	// One pull first, so that connections and the cache's own files are
	// open before counting.
	if w := do(p, http.MethodGet, blobPath("acme/app", digests[0])); w.Code != http.StatusOK {
		t.Fatalf("GET = %d", w.Code)
	}
	before := openFDs(t)
	for _, d := range digests[1:] {
		// Each pull is a new fetch, read from its growing file.
		w := do(p, http.MethodGet, blobPath("acme/app", d))
		if w.Code != http.StatusOK || sha(w.Body.Bytes()) != d {
			t.Fatalf("GET %s = %d", d, w.Code)
		}
	}
	if after := openFDs(t); after-before > 4 {
		t.Errorf("%d descriptors open after %d pulls, %d before", after, n-1, before)
	}
}
