package upstream

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobHeaders are the request headers OpenBlob forwards; anything else the
// caller's client sent stays at the proxy.
var blobHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since"}

// OpenBlob opens a blob for streaming. method is GET or HEAD; hdr may carry
// Range/If-* headers to forward. Redirects to storage hosts are followed
// without the upstream's credentials. The caller must close the body. A non
// 2xx upstream answer is returned as *Error (body already drained and
// closed).
//
// The timeout covers getting the response headers only; the body is bounded
// by ctx. The body of a 200 GET is hashed as it is read and its final Read
// fails with ErrDigestMismatch when the bytes are not the blob; 206 and 304
// answers are returned unchecked.
func (c *Client) OpenBlob(ctx context.Context, method, repo string, digest v1.Hash, hdr http.Header) (*http.Response, error) {
	if method != http.MethodGet && method != http.MethodHead {
		return nil, fmt.Errorf("upstream %s: method %s not allowed for blobs", c.name, method)
	}
	if _, _, err := c.checkArgs(repo, digest.String()); err != nil {
		return nil, err
	}
	h, err := v1.Hasher(digest.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	resp, err := c.open(ctx, headersOnly, method, repo, "blobs/"+digest.String(), nil, forward(hdr, blobHeaders...),
		http.StatusOK, http.StatusPartialContent, http.StatusNotModified)
	if err != nil {
		return nil, err
	}
	if method == http.MethodGet && resp.StatusCode == http.StatusOK {
		resp.Body = &verifyingReader{rc: resp.Body, h: h, want: digest, name: c.name}
	}
	return resp, nil
}

// verifyingReader hashes a full blob as it streams and turns its EOF into
// ErrDigestMismatch when the bytes were not the requested blob.
type verifyingReader struct {
	rc   io.ReadCloser
	h    hash.Hash
	want v1.Hash
	name string
	err  error
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			err = fmt.Errorf("upstream %s: blob %s: %w: got %s:%s", v.name, v.want, ErrDigestMismatch, v.want.Algorithm, got)
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.rc.Close() }

// Blob implements verify.Fetcher: the whole blob, read through limit and
// checked against digest. The timeout covers the whole read.
func (c *Client) Blob(ctx context.Context, repo string, digest v1.Hash, limit int64) ([]byte, error) {
	if limit < 0 {
		return nil, fmt.Errorf("upstream %s: negative blob limit", c.name)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.OpenBlob(ctx, http.MethodGet, repo, digest, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("upstream %s: blob %s: %w: status %d", c.name, digest, ErrInvalidResponse, resp.StatusCode)
	}
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("upstream %s: blob %s is %d bytes, limit %d: %w", c.name, digest, resp.ContentLength, limit, ErrTooLarge)
	}
	// The verifying body only reports a mismatch once it reaches EOF,
	// which reading up to limit+1 bytes of a blob within limit does.
	n := limit
	if n < math.MaxInt64 {
		n++
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, n))
	if errors.Is(err, ErrDigestMismatch) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("upstream %s: reading blob %s: %w", c.name, digest, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("upstream %s: blob %s exceeds %d bytes: %w", c.name, digest, limit, ErrTooLarge)
	}
	return b, nil
}
