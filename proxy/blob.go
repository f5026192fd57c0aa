package proxy

import (
	"errors"
	"io"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"go.uber.org/zap"
)

// Request headers forwarded to the upstream for blobs: ranges and
// conditionals only. Client credentials are never forwarded.
var blobRequestHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since"}

// Response headers passed back to the client.
var blobResponseHeaders = []string{"Content-Length", "Content-Range", "Accept-Ranges", "Content-Type", "Docker-Content-Digest", "ETag", "Last-Modified"}

func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, digest v1.Hash) error {
	if p.opts.blobGating {
		if _, ok := p.blobs.get(blobKey(u.name, repo, digest)); !ok {
			return errorf(http.StatusForbidden, CodeDenied, "blob %s is not referenced by any verified manifest in %s", digest, repo)
		}
	}
	hdr := http.Header{}
	for _, k := range blobRequestHeaders {
		for _, v := range r.Header.Values(k) {
			hdr.Add(k, v)
		}
	}
	ctx := r.Context()
	resp, err := u.client.OpenBlob(ctx, r.Method, repo, digest, hdr)
	if err != nil {
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.Status == http.StatusRequestedRangeNotSatisfiable {
			copyHeaders(w.Header(), ue.Header, []string{"Content-Range"})
			return errorf(http.StatusRequestedRangeNotSatisfiable, CodeBlobUnknown, "requested range not satisfiable")
		}
		return p.upstreamFailure(ctx, u, err, CodeBlobUnknown, "blob")
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
	case http.StatusNotModified:
		copyHeaders(w.Header(), resp.Header, []string{"ETag", "Last-Modified", "Docker-Content-Digest"})
		w.WriteHeader(http.StatusNotModified)
		return nil
	default:
		p.metrics.upstreamErrors.WithLabelValues(u.name, "status_other").Inc()
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered %d for a blob", u.name, resp.StatusCode)
	}
	copyHeaders(w.Header(), resp.Header, blobResponseHeaders)
	if w.Header().Get("Docker-Content-Digest") == "" {
		w.Header().Set("Docker-Content-Digest", digest.String())
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return nil
	}
	// A verified 200 body copies itself: it hashes on a second goroutine
	// with its own pooled buffers and holds back the last chunk until the
	// digest matches. Range and other unverified answers go through the
	// proxy's pooled buffer (w does not implement io.ReaderFrom, see
	// statusRecorder), in large writes with constant memory.
	var n int64
	if wt, ok := resp.Body.(io.WriterTo); ok {
		n, err = wt.WriteTo(w)
	} else {
		bp := p.bufPool.Get().(*[]byte)
		n, err = io.CopyBuffer(w, resp.Body, *bp)
		p.bufPool.Put(bp)
	}
	p.metrics.blobBytes.Add(float64(n))
	if err != nil {
		mismatch := errors.Is(err, upstream.ErrDigestMismatch)
		if mismatch || r.Context().Err() == nil {
			// The status is already sent; aborting the connection is the
			// only way left to tell the client the body is not the blob.
			// A mismatch is reported even if the client left meanwhile:
			// the upstream served the wrong bytes either way.
			kind := "blob_stream"
			if mismatch {
				kind = "blob_digest_mismatch"
			}
			p.log.Warn("blob stream failed", zap.String("upstream", u.name), zap.String("repository", repo),
				zap.String("digest", digest.String()), zap.Int64("bytes", n), zap.Error(err))
			p.metrics.upstreamErrors.WithLabelValues(u.name, kind).Inc()
		}
		panic(http.ErrAbortHandler)
	}
	return nil
}

func copyHeaders(dst, src http.Header, keys []string) {
	for _, k := range keys {
		if v := src.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
}
