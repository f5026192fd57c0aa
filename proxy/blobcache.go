package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BlobCache is a store of blobs on local disk whose bytes matched their
// digest, keyed by upstream and digest (cache/blobs.Store behind an
// adapter). Gating is the proxy's: the cache is asked only for a blob the
// requesting repository may read.
type BlobCache interface {
	// Get opens the cached blob; the caller closes the file.
	Get(upstream string, digest v1.Hash) (f *os.File, size int64, ok bool)
	// Create admits a blob of size bytes about to be fetched;
	// ErrBlobCacheFull (wrapped) means it is not to be cached.
	Create(upstream string, digest v1.Hash, size int64) (BlobCacheWriter, error)
}

// BlobCacheWriter receives one blob as it is fetched. The proxy calls
// Commit only after the bytes matched the digest, Abort otherwise, and
// Close once no reader of the file is left. ReadAt reads back what was
// written, for the pulls sharing the fetch. Write may wrap
// ErrBlobCacheFull when the cache finds no room for the rest: the blob
// is then served without being cached.
type BlobCacheWriter interface {
	io.Writer
	io.ReaderAt
	Commit() error
	Abort()
	Close() error
}

// ErrBlobCacheFull is wrapped by a BlobCache's Create, or its Writer's
// Write, when the blob does not fit (too large, or no room left above the
// free-space floor): the blob is served without being cached, and that is
// not an error.
var ErrBlobCacheFull = errors.New("blob cache full")

// WithBlobCache serves blobs from c and writes the blobs it fetches into
// it once verified. Blob gating still decides, per upstream and
// repository, who may read a cached blob. Default: none.
func WithBlobCache(c BlobCache) Option {
	return func(o *options) error {
		if c == nil {
			return errors.New("nil blob cache")
		}
		o.blobFetch.cache = c
		return nil
	}
}

// serveCachedBlob answers from the cache with http.ServeContent (Range,
// conditionals, HEAD; sendfile where the connection and its mode allow).
// A gated blob costs no upstream request; any other is served only once
// a HEAD shows the upstream has it in repo (see serveBlobShared). It
// reports false on a miss, and when that HEAD does not confirm the blob:
// the request then goes to the upstream, which gives its own answer.
func (p *Proxy) serveCachedBlob(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, digest v1.Hash, size int64, wouldDeny *blobGate, gated bool) bool {
	f, n, ok := p.fetches.cache.Get(u.name, digest)
	if !ok {
		return false
	}
	defer f.Close()
	if size >= 0 && n != size {
		// The descriptor contradicts the verified file: the upstream's
		// answer (and its size check) decides, as without a cache.
		return false
	}
	if !gated && !p.upstreamHasBlob(r, u, repo, digest, n) {
		return false
	}
	p.fetches.hits.Inc()
	if wouldDeny != nil {
		p.recordBlob(r, u, repo, digest, *wouldDeny)
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", digest.String())
	h.Set("ETag", `"`+digest.String()+`"`)
	http.ServeContent(forFile(w), r, "", time.Time{}, f)
	return true
}

// upstreamHasBlob asks the upstream, with a HEAD in repo, whether it
// serves the blob there with length n.
func (p *Proxy) upstreamHasBlob(r *http.Request, u *upstreamEntry, repo string, digest v1.Hash, n int64) bool {
	resp, err := u.client.OpenBlob(r.Context(), http.MethodHead, repo, digest, n, nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
