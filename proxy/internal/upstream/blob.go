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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobHeaders are the request headers OpenBlob forwards; anything else the
// caller's client sent stays at the proxy.
var blobHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since"}

// OpenBlob opens a blob for streaming. method is GET or HEAD; size is the
// blob's size when the caller knows it from a descriptor, else -1; hdr may
// carry Range/If-* headers to forward. Redirects to storage hosts are
// followed without the upstream's credentials. The caller must close the
// body. A non 2xx upstream answer is returned as *Error (body already
// drained and closed).
//
// The timeout covers getting the response headers only; the body is bounded
// by ctx. Whatever the answer, the body of a GET yields exactly
// resp.ContentLength bytes or fails: the length is the descriptor's size,
// the upstream's Content-Length, the length of its Content-Range, or, for a
// 200 without any of these, the Content-Length of a HEAD for the blob. A
// body that runs past it fails with ErrTooLarge before any byte beyond it
// is returned; one that ends early fails with io.ErrUnexpectedEOF.
//
// Which answers are checked against the digest:
//   - 200, asked for a range or not, is the whole blob: it is hashed as it
//     is read and its final Read fails with ErrDigestMismatch when the bytes
//     are not the blob. A caller relaying it must relay it as a 200.
//   - 206 to a request without Range is refused with ErrUnexpectedPartial
//     (wrapping ErrInvalidResponse): the caller asked for the whole blob
//     and could not check a part.
//   - 206 whose Content-Range spans the whole blob is hashed like a 200.
//   - 206 for a part of the blob is returned unchecked (a part cannot be
//     hashed against the digest of the whole); its Content-Range must be a
//     single well-formed range. The client that asked for it assembles and
//     checks the blob.
//   - 304 carries no body.
//
// The verified body also implements io.WriterTo, the fast path for
// streaming: it hashes concurrently with the copy and never writes the
// final chunk of a mismatching blob.
func (c *Client) OpenBlob(ctx context.Context, method, repo string, digest v1.Hash, size int64, hdr http.Header) (*http.Response, error) {
	// Client streams use their own connection pool (see pools).
	return c.openBlob(context.WithValue(ctx, streamKey{}, true), method, repo, digest, size, hdr, true)
}

// openBlob is OpenBlob; without needLength a 200 of unknown length is
// returned hashed but unframed (ContentLength -1), for a caller that
// bounds the read itself.
func (c *Client) openBlob(ctx context.Context, method, repo string, digest v1.Hash, size int64, hdr http.Header, needLength bool) (*http.Response, error) {
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
	fwd := forward(hdr, blobHeaders...)
	resp, err := c.open(ctx, headersOnly, method, repo, "blobs/"+digest.String(), nil, fwd,
		http.StatusOK, http.StatusPartialContent, http.StatusNotModified)
	if err != nil {
		return nil, err
	}
	if err := c.frameBlob(ctx, resp, method, repo, digest, size, len(fwd.Values("Range")) > 0, needLength, h); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// frameBlob checks a blob answer's status and length against the request
// and wraps its body so that it yields exactly the announced bytes,
// hashed when they are the whole blob.
func (c *Client) frameBlob(ctx context.Context, resp *http.Response, method, repo string, digest v1.Hash, size int64, ranged, needLength bool, h hash.Hash) error {
	wrongSize := func(what string, n int64) error {
		return fmt.Errorf("upstream %s: blob %s: %w: %s %d, descriptor size %d", c.name, digest, ErrDigestMismatch, what, n, size)
	}
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil
	case http.StatusPartialContent:
		if !ranged {
			return fmt.Errorf("upstream %s: blob %s: %w: %w", c.name, digest, ErrInvalidResponse, ErrUnexpectedPartial)
		}
		first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fmt.Errorf("upstream %s: blob %s: %w: %w", c.name, digest, ErrInvalidResponse, err)
		}
		if size >= 0 && total != size {
			return wrongSize("Content-Range total", total)
		}
		n := last - first + 1
		if resp.ContentLength >= 0 && resp.ContentLength != n {
			return fmt.Errorf("upstream %s: blob %s: %w: Content-Length %d for a range of %d bytes",
				c.name, digest, ErrInvalidResponse, resp.ContentLength, n)
		}
		if method == http.MethodHead {
			return nil
		}
		resp.ContentLength = n
		body := &exactReader{rc: resp.Body, left: n, name: c.name, digest: digest, size: n}
		if first == 0 && n == total {
			resp.Body = &verifyingReader{rc: body, h: h, want: digest, name: c.name}
		} else {
			resp.Body = body
		}
		return nil
	}
	// 200: the whole blob, whether a range was asked for or not.
	n := resp.ContentLength
	if size >= 0 {
		if n >= 0 && n != size {
			return wrongSize("Content-Length", n)
		}
		n = size
	}
	if method == http.MethodHead {
		return nil
	}
	if n < 0 && !needLength {
		resp.Body = &verifyingReader{rc: resp.Body, h: h, want: digest, name: c.name}
		return nil
	}
	if n < 0 {
		// Without a length an endless body could be streamed on forever;
		// the distribution spec requires one on HEAD.
		var err error
		if n, err = c.blobLength(ctx, repo, digest); err != nil {
			return err
		}
	}
	resp.ContentLength = n
	resp.Body = &verifyingReader{
		rc: &exactReader{rc: resp.Body, left: n, name: c.name, digest: digest, size: n},
		h:  h, want: digest, name: c.name,
	}
	return nil
}

// blobLength asks the upstream for a blob's length with a HEAD.
func (c *Client) blobLength(ctx context.Context, repo string, digest v1.Hash) (int64, error) {
	resp, err := c.open(ctx, headersOnly, http.MethodHead, repo, "blobs/"+digest.String(), nil, http.Header{}, http.StatusOK)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("upstream %s: blob %s: %w: no Content-Length on GET or HEAD", c.name, digest, ErrInvalidResponse)
	}
	return resp.ContentLength, nil
}

// parseContentRange parses a 206's "bytes first-last/total" with a known
// total; multipart answers (no Content-Range) and "*" totals are refused.
func parseContentRange(s string) (first, last, total int64, err error) {
	spec, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("no single byte range in Content-Range %q", sanitize(s, 100))
	}
	rng, tot, ok1 := strings.Cut(spec, "/")
	f, l, ok2 := strings.Cut(rng, "-")
	if !ok1 || !ok2 {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", sanitize(s, 100))
	}
	if first, err = parseLength(f); err == nil {
		if last, err = parseLength(l); err == nil {
			total, err = parseLength(tot)
		}
	}
	if err != nil || first > last || last >= total {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", sanitize(s, 100))
	}
	return first, last, total, nil
}

// parseLength accepts only plain decimal digits (no sign, no spaces).
func parseLength(s string) (int64, error) {
	if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a length")
	}
	return strconv.ParseInt(s, 10, 64)
}

// exactReader yields exactly size bytes from rc. It reads at most one byte
// past what is left, so a body that runs on is detected without waiting
// for its end and without any byte beyond size being returned.
type exactReader struct {
	rc     io.ReadCloser
	left   int64
	size   int64
	name   string
	digest v1.Hash
	err    error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left < int64(len(p)) {
		p = p[:e.left+1]
	}
	n, err := e.rc.Read(p)
	if int64(n) > e.left {
		n = int(e.left)
		e.left = 0
		e.err = fmt.Errorf("upstream %s: blob %s: %w: body runs past its %d bytes", e.name, e.digest, ErrTooLarge, e.size)
		return n, e.err
	}
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		err = fmt.Errorf("upstream %s: blob %s: body ended %d bytes short of %d: %w", e.name, e.digest, e.left, e.size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		e.err = err
	}
	return n, err
}

func (e *exactReader) Close() error { return e.rc.Close() }

// A stream copy holds its data in buffers between reading it from the
// upstream and writing it to the client, so whatever a client that stops
// reading has not taken stays there until the client is dropped. Large
// buffers mean larger reads from the upstream socket, fewer hand-offs to
// the hashing goroutine and fewer writes: on loopback, 1 MiB streamed for
// 15–20 % less CPU than 24 KiB. Only as many large buffers as a
// StreamBudget allows are held at once; every other stream runs on small
// ones, so however many streams stall, each one beyond the budget holds at
// most two small buffers. 24 KiB keeps a stalled stream's whole cost in
// the proxy (buffers, both connections, goroutines) near 110 KiB; 32 KiB
// came to 125 KiB, 16 KiB to 95 KiB for another 15 % of CPU.
//
// Each chunk after the first is read until it holds at least
// streamChunkMin bytes (or the whole small buffer), because how much one
// Read returns depends on the upstream's transport, not on the stream:
// over TLS every Read yields one record, at most 16 KiB, so a 1 MiB buffer
// carried 16 KiB chunks, each one hand-off to the hasher and one write to
// the client (64 per MiB instead of 1–2 over plain TCP). Gathering only
// delays bytes by at most streamChunkMin of upstream time, and it starts
// once the first bytes are written, so the response headers, which go out
// with them, are not delayed.
const (
	streamBufferSize      = 1 << 20
	smallStreamBufferSize = 24 << 10
	streamChunkMin        = 256 << 10
)

var (
	streamBufPool      = sync.Pool{New: func() any { b := make([]byte, streamBufferSize); return &b }}
	smallStreamBufPool = sync.Pool{New: func() any { b := make([]byte, smallStreamBufferSize); return &b }}
)

// StreamBudget bounds the bytes of large stream buffers held at once by
// the streams that share it. Taking from it never waits: a stream that
// finds no room runs on small buffers and tries again before each read,
// and gives back what it took when it ends. A nil *StreamBudget has no
// room. Safe for concurrent use.
type StreamBudget struct {
	limit int64
	used  atomic.Int64
}

// NewStreamBudget returns a budget of limit bytes (a negative limit is
// 0: every stream runs on small buffers).
func NewStreamBudget(limit int64) *StreamBudget {
	return &StreamBudget{limit: max(limit, 0)}
}

// Limit is the budget's size in bytes.
func (b *StreamBudget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit
}

// InUse is the bytes of large buffers held now.
func (b *StreamBudget) InUse() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

func (b *StreamBudget) tryAcquire(n int64) bool {
	if b == nil {
		return false
	}
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *StreamBudget) release(n int64) { b.used.Add(-n) }

// streamBuffers are one stream's buffer slots. A slot holds a small
// buffer, or a large one while the budget has room for it.
type streamBuffers struct {
	budget *StreamBudget
	slots  [2]*[]byte
	large  [2]bool
	// limited records that the budget had no room for a slot at some
	// point of the stream.
	limited bool
}

// get returns slot i's buffer, first exchanged for a large one if the
// budget now has room. The slot must be free: nothing may still be
// hashing or writing from it.
func (s *streamBuffers) get(i int) []byte {
	if !s.large[i] {
		if s.budget.tryAcquire(streamBufferSize) {
			if s.slots[i] != nil {
				smallStreamBufPool.Put(s.slots[i])
			}
			s.slots[i], s.large[i] = streamBufPool.Get().(*[]byte), true
		} else {
			s.limited = true
			if s.slots[i] == nil {
				s.slots[i] = smallStreamBufPool.Get().(*[]byte)
			}
		}
	}
	return *s.slots[i]
}

// release returns every buffer to its pool and the large ones' bytes to
// the budget.
func (s *streamBuffers) release() {
	for i, b := range s.slots {
		switch {
		case b == nil:
		case s.large[i]:
			streamBufPool.Put(b)
			s.budget.release(streamBufferSize)
		default:
			smallStreamBufPool.Put(b)
		}
		s.slots[i], s.large[i] = nil, false
	}
}

// Stream copies body, an OpenBlob body, to w on buffers from b; a nil b
// streams on small buffers only. A verified body keeps the guarantees of
// its WriteTo: the last chunk of a blob that does not match its digest is
// never written. limited reports that b had no room for large buffers at
// some point, so the stream ran, at least partly, on small ones.
//
// A read that fails returns its error without writing the bytes that came
// with it. Write errors are returned as w returned them.
func Stream(w io.Writer, body io.Reader, b *StreamBudget) (written int64, limited bool, err error) {
	if v, ok := body.(*verifyingReader); ok {
		return v.writeTo(w, b)
	}
	bufs := streamBuffers{budget: b}
	defer bufs.release()
	for {
		buf := bufs.get(0)
		n, clean, rerr := readChunk(body, buf, written == 0)
		if rerr != nil && rerr != io.EOF {
			// What earlier reads of the chunk brought is good.
			n = clean
		}
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr == nil && m != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, bufs.limited, werr
			}
		}
		if rerr == io.EOF {
			return written, bufs.limited, nil
		}
		if rerr != nil {
			return written, bufs.limited, rerr
		}
	}
}

// readChunk reads into buf until it holds streamChunkMin bytes (all of
// buf when it is smaller), any byte at all when first, or a Read fails.
// The n bytes read come back with the error, as from a single Read; clean
// is how many of them came before the Read that returned it.
func readChunk(r io.Reader, buf []byte, first bool) (n, clean int, err error) {
	want := min(len(buf), streamChunkMin)
	if first {
		want = 1
	}
	for {
		clean = n
		var m int
		m, err = r.Read(buf[n:])
		n += m
		if err != nil || n >= want {
			return n, clean, err
		}
	}
}

// verifyingReader hashes a full blob as it streams and turns its EOF into
// ErrDigestMismatch when the bytes were not the requested blob. Read hashes
// inline; WriteTo, which io.Copy prefers, hashes on a second goroutine and
// withholds the final chunk until the digest is confirmed.
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
		err = v.check()
		if err == nil {
			err = io.EOF
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// check compares the hash of everything read so far with the digest.
func (v *verifyingReader) check() error {
	if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
		return fmt.Errorf("upstream %s: blob %s: %w: got %s:%s", v.name, v.want, ErrDigestMismatch, v.want.Algorithm, got)
	}
	return nil
}

// WriteTo streams the rest of the blob to w on small buffers; Stream
// streams it on large ones while a budget has room. Hashing runs on its
// own goroutine so that it overlaps with the socket copy instead of
// doubling its CPU time on the same core. Two buffers alternate: while chunk
// k is hashed, chunk k-1 is written and chunk k+1 is read. The send of a
// chunk to the hasher is unbuffered, so it completes only once the hasher
// has finished the previous chunk; that is what makes a buffer free to be
// read into again, without copying.
//
// Each chunk is written only after the next chunk has been read, so the
// last chunk is still held when EOF arrives (with data or as a separate
// empty read). It is written only if the digest matches: a client that
// does not check digests sees a short body, never a complete wrong blob.
//
// WriteTo returns the bytes written and nil at a verified EOF, or the
// first read, write or digest error. The hashing goroutine has exited by
// the time it returns, on every path.
func (v *verifyingReader) WriteTo(w io.Writer) (int64, error) {
	n, _, err := v.writeTo(w, nil)
	return n, err
}

// writeTo is WriteTo on buffers from budget; limited is as for Stream.
func (v *verifyingReader) writeTo(w io.Writer, budget *StreamBudget) (written int64, limited bool, err error) {
	if v.err == io.EOF {
		return 0, false, nil
	}
	if v.err != nil {
		return 0, false, v.err
	}
	bufs := streamBuffers{budget: budget}
	work := make(chan []byte)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range work {
			v.h.Write(b)
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(work)
			<-done
		}
	}
	defer func() {
		// The buffers go back to the pool only once the hasher is done
		// with them; a write error or a panic in w must not leave it
		// running.
		stop()
		limited = bufs.limited
		bufs.release()
		if err != nil {
			v.err = err
		}
	}()

	write := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		n, werr := w.Write(b)
		written += int64(n)
		if werr == nil && n != len(b) {
			werr = io.ErrShortWrite
		}
		return werr
	}
	var pending []byte
	i := 0
	for {
		// Slot i was written from (as pending) before the last read, and
		// the hasher took the last chunk only once done with slot i: it is
		// free to be exchanged and read into.
		buf := bufs.get(i)
		n, _, rerr := readChunk(v.rc, buf, written == 0)
		if n > 0 {
			work <- buf[:n]
		}
		if rerr == io.EOF {
			stop()
			if err := v.check(); err != nil {
				return written, false, err
			}
			if err := write(pending); err != nil {
				return written, false, err
			}
			if err := write(buf[:n]); err != nil {
				return written, false, err
			}
			v.err = io.EOF
			return written, false, nil
		}
		if rerr != nil {
			return written, false, rerr
		}
		if n == 0 {
			// Nothing was handed to the hasher, so this buffer is
			// still free and pending still unwritten.
			continue
		}
		if err := write(pending); err != nil {
			return written, false, err
		}
		pending = buf[:n]
		i ^= 1
	}
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
	// limit bounds the read, so a body of unknown length needs no HEAD.
	resp, err := c.openBlob(ctx, http.MethodGet, repo, digest, -1, nil, false)
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
