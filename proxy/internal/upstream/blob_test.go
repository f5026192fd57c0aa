package upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// read is one scripted answer of a scriptedBody.
type read struct {
	data []byte
	err  error
}

// scriptedBody answers Read from a script, so a test decides exactly how
// a stream is cut into reads and where EOF or an error arrives.
type scriptedBody struct {
	script []read
	closed bool
}

func (s *scriptedBody) Read(p []byte) (int, error) {
	if len(s.script) == 0 {
		return 0, io.EOF
	}
	r := &s.script[0]
	n := copy(p, r.data)
	r.data = r.data[n:]
	if len(r.data) > 0 {
		return n, nil
	}
	err := r.err
	s.script = s.script[1:]
	return n, err
}

func (s *scriptedBody) Close() error { s.closed = true; return nil }

// chunks scripts b as reads of size n, the last one carrying last.
func chunks(b []byte, n int, last error) []read {
	var rs []read
	for len(b) > n {
		rs = append(rs, read{data: b[:n]})
		b = b[n:]
	}
	return append(rs, read{data: b, err: last})
}

// limitedWriter fails once it has accepted max bytes.
type limitedWriter struct {
	bytes.Buffer
	max   int
	short bool // accept the rest of the failing write silently instead
}

var errWriterGone = errors.New("writer gone")

func (w *limitedWriter) Write(p []byte) (int, error) {
	if room := w.max - w.Len(); len(p) > room {
		w.Buffer.Write(p[:room])
		if w.short {
			return room, nil
		}
		return room, errWriterGone
	}
	return w.Buffer.Write(p)
}

func newVerifying(script []read, want []byte) *verifyingReader {
	s := sha256.Sum256(want)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
	return &verifyingReader{rc: &scriptedBody{script: script}, h: sha256.New(), want: h, name: "test"}
}

// TestVerifyingWriteTo runs each case inside a synctest bubble: the bubble
// fails the test if the hashing goroutine is still alive (blocked) once
// WriteTo has returned, so every path below doubles as a leak check. Each
// case runs on small buffers (WriteTo) and on large ones (Stream with a
// budget), and must give back every byte it took from the budget.
func TestVerifyingWriteTo(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 3*streamBufferSize+12345)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	tampered := append([]byte(nil), blob...)
	tampered[len(tampered)-1] ^= 1
	tamperedEarly := append([]byte(nil), blob...)
	tamperedEarly[0] ^= 1
	errReset := errors.New("connection reset")
	small := []byte("small blob")

	for _, tc := range []writeToCase{
		{name: "eof with data", script: chunks(blob, 100_000, io.EOF), want: blob},
		{name: "eof alone", script: append(chunks(blob, 100_000, nil), read{err: io.EOF}), want: blob},
		{name: "empty reads between chunks", script: []read{{data: blob[:10]}, {}, {}, {data: blob[10:]}, {}, {err: io.EOF}}, want: blob},
		{name: "one read", script: []read{{data: small, err: io.EOF}}, want: small},
		{name: "empty blob", script: []read{{err: io.EOF}}, want: []byte{}},
		{name: "last byte tampered", script: chunks(tampered, 100_000, io.EOF), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		{name: "last byte tampered, eof alone", script: append(chunks(tampered, 100_000, nil), read{err: io.EOF}), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		{name: "first byte tampered", script: chunks(tamperedEarly, 100_000, io.EOF), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		{name: "single chunk tampered", script: []read{{data: []byte("small blop"), err: io.EOF}}, want: small, err: ErrDigestMismatch, maxOut: 0},
		{name: "truncated", script: chunks(blob[:len(blob)-1], 100_000, io.EOF), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		{name: "too long", script: chunks(append(append([]byte(nil), blob...), 'x'), 100_000, io.EOF), want: blob, err: ErrDigestMismatch, maxOut: len(blob)},
		{name: "upstream error", script: []read{{data: blob[:20_000]}, {data: blob[20_000:30_000], err: errReset}}, want: blob, err: errReset, maxOut: 20_000},
		{name: "writer error", script: chunks(blob, 100_000, io.EOF), want: blob, w: &limitedWriter{max: 150_000}, err: errWriterGone, maxOut: 150_000},
		{name: "short write", script: chunks(blob, 100_000, io.EOF), want: blob, w: &limitedWriter{max: 150_000, short: true}, err: io.ErrShortWrite, maxOut: 150_000},
		// TLS hands over one record, at most 16 KiB, per Read: chunks are
		// gathered from many reads, and the last one is still withheld.
		{name: "record-sized reads", script: chunks(blob, 16<<10, io.EOF), want: blob},
		{name: "record-sized reads, last byte tampered", script: chunks(tampered, 16<<10, io.EOF), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		{name: "record-sized reads, eof alone, last byte tampered", script: append(chunks(tampered, 16<<10, nil), read{err: io.EOF}), want: blob, err: ErrDigestMismatch, maxOut: len(blob) - 1},
		// Gathering starts after the first write (the first record); what
		// was gathered with a failing read is never written.
		{name: "record-sized reads, upstream error", script: []read{{data: blob[:16<<10]}, {data: blob[16<<10 : 32<<10]}, {data: blob[32<<10 : 48<<10]}, {data: blob[48<<10 : 56<<10], err: errReset}}, want: blob, err: errReset, maxOut: 16 << 10},
	} {
		for _, large := range []bool{false, true} {
			name := tc.name
			if large {
				name += ", large buffers"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				tc.run(t, large, len(blob))
			})
		}
	}
}

// writeToCase is one stream of TestVerifyingWriteTo.
type writeToCase struct {
	name   string
	script []read
	want   []byte // the blob the digest names
	w      *limitedWriter
	err    error // nil: the whole blob is written
	// maxOut bounds what may reach the writer on failure.
	maxOut int
}

func (tc writeToCase) run(t *testing.T, large bool, blobLen int) {
	var sent []byte
	for _, r := range tc.script {
		sent = append(sent, r.data...)
	}
	// Each run consumes its own copy of the script and its own writer.
	script := append([]read(nil), tc.script...)
	if tc.w != nil {
		tc.w = &limitedWriter{max: tc.w.max, short: tc.w.short}
	}
	synctest.Test(t, func(t *testing.T) {
		v := newVerifying(script, tc.want)
		w := tc.w
		if w == nil {
			w = &limitedWriter{max: blobLen + 1}
		}
		var n int64
		var err error
		if large {
			budget := NewStreamBudget(2 * streamBufferSize)
			var limited bool
			n, limited, err = Stream(w, v, budget)
			if limited {
				t.Error("a budget with room for both buffers reported as limited")
			}
			if u := budget.InUse(); u != 0 {
				t.Errorf("%d bytes of the budget still held after the stream", u)
			}
		} else {
			n, err = v.WriteTo(w)
		}
		if n != int64(w.Len()) {
			t.Errorf("WriteTo reported %d bytes, writer got %d", n, w.Len())
		}
		if tc.err == nil {
			if err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			if !bytes.Equal(w.Bytes(), tc.want) {
				t.Fatalf("wrote %d bytes, not the blob (%d bytes)", w.Len(), len(tc.want))
			}
			if m, err := v.Read(make([]byte, 1)); m != 0 || err != io.EOF {
				t.Errorf("Read after the stream = %d, %v; want 0, EOF", m, err)
			}
			return
		}
		if !errors.Is(err, tc.err) {
			t.Fatalf("err = %v, want %v", err, tc.err)
		}
		if w.Len() > tc.maxOut {
			t.Errorf("%d bytes reached the writer, at most %d allowed", w.Len(), tc.maxOut)
		}
		if !bytes.HasPrefix(sent, w.Bytes()) {
			t.Error("bytes written are not a prefix of the stream")
		}
		// The failure sticks: neither Read nor another WriteTo
		// can turn it into a clean end of stream.
		if _, err := v.Read(make([]byte, 1)); !errors.Is(err, tc.err) {
			t.Errorf("Read after failure = %v", err)
		}
		if _, err := v.WriteTo(io.Discard); !errors.Is(err, tc.err) {
			t.Errorf("WriteTo after failure = %v", err)
		}
	})
}

// TestVerifyingReadThenWriteTo checks that a stream partly consumed with
// Read continues with WriteTo over one running hash.
func TestVerifyingReadThenWriteTo(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("0123456789"), 100_000)
	for _, tamper := range []bool{false, true} {
		body := append([]byte(nil), blob...)
		if tamper {
			body[5] ^= 1 // in the part consumed by Read
		}
		v := newVerifying(chunks(body, 4096, io.EOF), blob)
		head := make([]byte, 10)
		if _, err := io.ReadFull(v, head); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		_, err := v.WriteTo(&out)
		if tamper {
			if !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("tampered head: err = %v, want mismatch", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(append(head, out.Bytes()...), blob) {
			t.Fatalf("WriteTo after Read: %v", err)
		}
	}
}

// lyingBlob is an upstream whose blob answers a test scripts; it counts
// the HEADs it receives.
type lyingBlob struct {
	answer func(w http.ResponseWriter, r *http.Request)
	heads  atomic.Int32
}

func (l *lyingBlob) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		return
	}
	if r.Method == http.MethodHead {
		l.heads.Add(1)
	}
	l.answer(w, r)
}

// stream writes body in flushed pieces without a Content-Length, so the
// answer is chunked; then, if endless, junk until the client goes away
// (at most 4 MiB, so that a reader without a bound fails rather than
// hangs).
func stream(w http.ResponseWriter, r *http.Request, status int, body []byte, endless bool) {
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
	w.(http.Flusher).Flush()
	junk := bytes.Repeat([]byte("z"), 64<<10)
	for i := 0; endless && i < 64 && r.Context().Err() == nil; i++ {
		if _, err := w.Write(junk); err != nil {
			return
		}
		w.(http.Flusher).Flush()
	}
}

// headLength answers a HEAD with Content-Length n and hands GETs to get.
func headLength(n int, get func(w http.ResponseWriter, r *http.Request)) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(n))
			return
		}
		get(w, r)
	}
}

func partial(contentRange string, body []byte, withLength bool) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if contentRange != "" {
			w.Header().Set("Content-Range", contentRange)
		}
		if withLength {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(http.StatusPartialContent)
		if !withLength {
			// Sent before the body, the header cannot get a length.
			w.(http.Flusher).Flush()
		}
		_, _ = w.Write(body)
	}
}

// TestOpenBlobUntrustedAnswers checks OpenBlob against upstreams that lie
// about what they send: a 206 nobody asked for, a whole-blob 206 of the
// wrong bytes, bodies longer or shorter than announced, and ranges that
// contradict themselves. Whatever the answer, the body never yields a byte
// past the announced length, and the whole blob is only ever returned
// hashed.
func TestOpenBlobUntrustedAnswers(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("0123456789abcdef"), 20_000) // 320000 bytes
	size := len(blob)
	tampered := append([]byte(nil), blob...)
	tampered[size-1] ^= 1
	whole := fmt.Sprintf("bytes 0-%d/%d", size-1, size)
	noRange, rangeAll, rangePart := http.Header{}, http.Header{"Range": {"bytes=0-"}}, http.Header{"Range": {"bytes=10-19"}}

	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		hdr    http.Header
		size   int64 // the descriptor's size, -1 unknown
		// openErr is the error of OpenBlob itself; readErr that of
		// reading the body; want the bytes a clean read returns.
		openErr, readErr error
		want             []byte
		status           int
		maxHeads         int32
	}{
		{name: "206 without Range", hdr: noRange, size: -1,
			answer: partial(whole, blob, true), openErr: ErrUnexpectedPartial},
		{name: "206 part without Range", hdr: noRange, size: -1,
			answer: partial("bytes 0-9/320000", blob[:10], true), openErr: ErrUnexpectedPartial},
		{name: "206 whole range", hdr: rangeAll, size: -1,
			answer: partial(whole, blob, true), want: blob, status: http.StatusPartialContent},
		{name: "206 whole range, wrong bytes", hdr: rangeAll, size: -1,
			answer: partial(whole, tampered, true), readErr: ErrDigestMismatch},
		{name: "206 whole range, chunked wrong bytes", hdr: rangeAll, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", whole)
				stream(w, r, http.StatusPartialContent, tampered, false)
			}, readErr: ErrDigestMismatch},
		{name: "206 whole range, endless", hdr: rangeAll, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", whole)
				stream(w, r, http.StatusPartialContent, blob, true)
			}, readErr: ErrTooLarge},
		{name: "206 total differs from descriptor", hdr: rangePart, size: int64(size) + 1,
			answer: partial("bytes 10-19/320000", blob[10:20], true), openErr: ErrDigestMismatch},
		{name: "206 part", hdr: rangePart, size: -1,
			answer: partial("bytes 10-19/320000", blob[10:20], true), want: blob[10:20], status: http.StatusPartialContent},
		{name: "206 part, endless", hdr: rangePart, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", "bytes 10-19/320000")
				stream(w, r, http.StatusPartialContent, blob[10:20], true)
			}, readErr: ErrTooLarge},
		{name: "206 part, short", hdr: rangePart, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", "bytes 10-19/320000")
				stream(w, r, http.StatusPartialContent, blob[10:15], false)
			}, readErr: io.ErrUnexpectedEOF},
		{name: "206 length contradicts range", hdr: rangePart, size: -1,
			answer: partial("bytes 10-19/320000", blob[10:21], true), openErr: ErrInvalidResponse},
		{name: "206 without Content-Range", hdr: rangePart, size: -1,
			answer: partial("", blob[10:20], true), openErr: ErrInvalidResponse},
		{name: "206 unknown total", hdr: rangePart, size: -1,
			answer: partial("bytes 10-19/*", blob[10:20], true), openErr: ErrInvalidResponse},
		{name: "206 inverted range", hdr: rangePart, size: -1,
			answer: partial("bytes 19-10/320000", blob[10:20], false), openErr: ErrInvalidResponse},
		{name: "206 range past total", hdr: rangePart, size: -1,
			answer: partial("bytes 10-320000/320000", blob[10:20], false), openErr: ErrInvalidResponse},
		{name: "206 signed range", hdr: rangePart, size: -1,
			answer: partial("bytes +10-19/320000", blob[10:20], true), openErr: ErrInvalidResponse},
		{name: "206 range claiming the whole blob", hdr: rangePart, size: -1,
			answer: partial("bytes 0-9/10", blob[:10], false), readErr: ErrDigestMismatch},
		{name: "200 to a Range request", hdr: rangePart, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", "bytes 10-19/320000") // a lie on a 200
				w.Header().Set("Content-Length", strconv.Itoa(size))
				_, _ = w.Write(blob)
			}, want: blob, status: http.StatusOK},
		{name: "200 to a Range request, wrong bytes", hdr: rangePart, size: -1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(size))
				_, _ = w.Write(tampered)
			}, readErr: ErrDigestMismatch},
		{name: "200 chunked, length from HEAD", hdr: noRange, size: -1, maxHeads: 1,
			answer: headLength(size, func(w http.ResponseWriter, r *http.Request) {
				stream(w, r, http.StatusOK, blob, false)
			}), want: blob, status: http.StatusOK},
		{name: "200 chunked endless, length from HEAD", hdr: noRange, size: -1, maxHeads: 1,
			answer: headLength(size, func(w http.ResponseWriter, r *http.Request) {
				stream(w, r, http.StatusOK, blob, true)
			}), readErr: ErrTooLarge},
		{name: "200 chunked short, length from HEAD", hdr: noRange, size: -1, maxHeads: 1,
			answer: headLength(size, func(w http.ResponseWriter, r *http.Request) {
				stream(w, r, http.StatusOK, blob[:size-1], false)
			}), readErr: io.ErrUnexpectedEOF},
		{name: "200 chunked endless, descriptor size", hdr: noRange, size: int64(size),
			answer: func(w http.ResponseWriter, r *http.Request) {
				stream(w, r, http.StatusOK, blob, true)
			}, readErr: ErrTooLarge},
		{name: "200 chunked, no length anywhere", hdr: noRange, size: -1, maxHeads: 1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				stream(w, r, http.StatusOK, blob, false)
			}, openErr: ErrInvalidResponse},
		{name: "206 past any length", hdr: rangePart, size: -1,
			answer: partial("bytes 10-9223372036854775806/9223372036854775807", blob[10:20], false), readErr: io.ErrUnexpectedEOF},
		{name: "200 length differs from descriptor", hdr: noRange, size: int64(size) - 1,
			answer: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(size))
				_, _ = w.Write(blob)
			}, openErr: ErrDigestMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := &lyingBlob{answer: tc.answer}
			srv := httptest.NewServer(http.HandlerFunc(up.serve))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", sha256Hash(blob), tc.size, tc.hdr)
			if n := up.heads.Load(); n > tc.maxHeads {
				t.Errorf("%d HEADs sent, want at most %d", n, tc.maxHeads)
			}
			if tc.openErr != nil {
				if !errors.Is(err, tc.openErr) {
					t.Fatalf("OpenBlob: err = %v, want %v", err, tc.openErr)
				}
				if errors.Is(tc.openErr, ErrUnexpectedPartial) && !errors.Is(err, ErrInvalidResponse) {
					t.Errorf("unexpected partial is not an invalid response: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenBlob: %v", err)
			}
			defer resp.Body.Close()
			// io.Copy takes the body's WriteTo when it has one, the path
			// the proxy streams through.
			var got bytes.Buffer
			_, err = io.Copy(&got, resp.Body)
			if tc.readErr != nil {
				if !errors.Is(err, tc.readErr) {
					t.Fatalf("read: err = %v after %d bytes, want %v", err, got.Len(), tc.readErr)
				}
				if int64(got.Len()) > resp.ContentLength {
					t.Errorf("%d bytes returned, past the announced %d", got.Len(), resp.ContentLength)
				}
				if errors.Is(tc.readErr, ErrDigestMismatch) && got.Len() >= size {
					t.Errorf("the whole wrong blob was returned")
				}
				return
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if resp.StatusCode != tc.status || !bytes.Equal(got.Bytes(), tc.want) {
				t.Fatalf("status %d, %d bytes; want %d, %d bytes", resp.StatusCode, got.Len(), tc.status, len(tc.want))
			}
			if resp.ContentLength != int64(len(tc.want)) {
				t.Errorf("ContentLength = %d, want %d", resp.ContentLength, len(tc.want))
			}
		})
	}
}

// TestExactReader checks the length framing on its own: exactly size
// bytes, never one more, however the source cuts its reads.
func TestExactReader(t *testing.T) {
	t.Parallel()
	body := []byte("0123456789")
	for _, tc := range []struct {
		name   string
		script []read
		size   int64
		err    error
	}{
		{name: "exact", script: chunks(body, 3, io.EOF), size: 10},
		{name: "exact, eof alone", script: append(chunks(body, 3, nil), read{err: io.EOF}), size: 10},
		{name: "one byte over", script: chunks(append(append([]byte(nil), body...), 'x'), 3, io.EOF), size: 10, err: ErrTooLarge},
		{name: "over in one read", script: []read{{data: append(append([]byte(nil), body...), "xyz"...)}}, size: 10, err: ErrTooLarge},
		{name: "short", script: chunks(body[:9], 3, io.EOF), size: 10, err: io.ErrUnexpectedEOF},
		{name: "empty", script: []read{{err: io.EOF}}, size: 0},
		{name: "empty, not empty", script: []read{{data: []byte("x"), err: io.EOF}}, size: 0, err: ErrTooLarge},
		{name: "largest size", script: chunks(body, 3, io.EOF), size: math.MaxInt64, err: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := &exactReader{rc: &scriptedBody{script: tc.script}, left: tc.size, size: tc.size, name: "test"}
			got, err := io.ReadAll(e)
			if int64(len(got)) > tc.size {
				t.Fatalf("%d bytes returned, size %d", len(got), tc.size)
			}
			if tc.err == nil {
				if err != nil || !bytes.Equal(got, body[:tc.size]) {
					t.Fatalf("read %q, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if _, err := e.Read(make([]byte, 4)); !errors.Is(err, tc.err) {
				t.Errorf("the failure did not stick: %v", err)
			}
		})
	}
}

// gateWriter blocks its first Write until open is closed, recording the
// capacity of the buffer it was handed: the size of the stream buffer the
// bytes sit in while the client does not take them.
type gateWriter struct {
	bytes.Buffer
	open    chan struct{}
	blocked bool
	bufCap  int
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if !g.blocked {
		g.blocked = true
		g.bufCap = cap(p)
		<-g.open
	}
	return g.Buffer.Write(p)
}

// TestStreamBudgetBoundsStalledStreams stalls more streams than the budget
// has room for: the large buffers held stay within the budget, the streams
// beyond it hold small buffers and report it, and every stream still
// delivers its verified blob once its writer moves again and gives back
// all it took.
func TestStreamBudgetBoundsStalledStreams(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 3*streamBufferSize+999)
	for i := range blob {
		blob[i] = byte(i * 13)
	}
	synctest.Test(t, func(t *testing.T) {
		const streams = 5
		budget := NewStreamBudget(2 * streamBufferSize) // one stream's pair
		open := make(chan struct{})
		type result struct {
			n       int64
			limited bool
			err     error
		}
		writers := make([]*gateWriter, streams)
		results := make([]result, streams)
		done := make(chan struct{})
		for i := range streams {
			writers[i] = &gateWriter{open: open}
			v := newVerifying(chunks(blob, streamBufferSize, io.EOF), blob)
			go func() {
				defer func() { done <- struct{}{} }()
				n, limited, err := Stream(writers[i], v, budget)
				results[i] = result{n, limited, err}
			}()
		}
		synctest.Wait() // every stream is blocked in its first write

		if u := budget.InUse(); u > budget.Limit() {
			t.Errorf("stalled streams hold %d bytes of large buffers, budget %d", u, budget.Limit())
		}
		small := 0
		for _, w := range writers {
			if w.bufCap <= smallStreamBufferSize {
				small++
			}
		}
		// At most two streams can hold a large buffer (one each, or one
		// stream both); the rest stalled on small ones.
		if small < streams-2 {
			t.Errorf("%d of %d stalled streams on small buffers, want at least %d", small, streams, streams-2)
		}

		close(open)
		for range streams {
			<-done
		}
		limited := 0
		for i, r := range results {
			if r.err != nil || !bytes.Equal(writers[i].Bytes(), blob) {
				t.Fatalf("stream %d: %d bytes, %v", i, r.n, r.err)
			}
			if r.limited {
				limited++
			}
		}
		if limited < streams-2 {
			t.Errorf("%d streams reported the budget exhausted, want at least %d", limited, streams-2)
		}
		if u := budget.InUse(); u != 0 {
			t.Errorf("%d bytes of the budget still held after every stream ended", u)
		}
	})
}

// capWriter records the capacity of every buffer handed to Write and
// calls onWrite after the first.
type capWriter struct {
	bytes.Buffer
	caps    []int
	onWrite func()
}

func (c *capWriter) Write(p []byte) (int, error) {
	c.caps = append(c.caps, cap(p))
	if len(c.caps) == 1 && c.onWrite != nil {
		c.onWrite()
	}
	return c.Buffer.Write(p)
}

// TestStreamTakesRoomWhenFreed starts a stream while the budget is full
// and frees it mid-stream: the stream moves to large buffers for the rest
// and still reports that it was limited. A stream with no budget at all
// never uses large buffers.
func TestStreamTakesRoomWhenFreed(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 4*streamBufferSize)
	for i := range blob {
		blob[i] = byte(i * 5)
	}
	for _, verified := range []bool{true, false} {
		t.Run(fmt.Sprintf("verified=%v", verified), func(t *testing.T) {
			t.Parallel()
			body := func() io.Reader {
				script := chunks(blob, streamBufferSize, io.EOF)
				if verified {
					return newVerifying(script, blob)
				}
				return &scriptedBody{script: script}
			}
			budget := NewStreamBudget(2 * streamBufferSize)
			if !budget.tryAcquire(2 * streamBufferSize) {
				t.Fatal("empty budget refused")
			}
			w := &capWriter{onWrite: func() { budget.release(2 * streamBufferSize) }}
			n, limited, err := Stream(w, body(), budget)
			if err != nil || n != int64(len(blob)) || !bytes.Equal(w.Bytes(), blob) {
				t.Fatalf("Stream: %d bytes, %v", n, err)
			}
			if !limited {
				t.Error("a stream that started on small buffers did not report the budget exhausted")
			}
			if w.caps[0] > smallStreamBufferSize {
				t.Errorf("first write from a %d-byte buffer while the budget was full", w.caps[0])
			}
			if last := w.caps[len(w.caps)-1]; last != streamBufferSize {
				t.Errorf("last write from a %d-byte buffer after the budget was freed, want %d", last, streamBufferSize)
			}
			if u := budget.InUse(); u != 0 {
				t.Errorf("%d bytes of the budget still held", u)
			}

			w = &capWriter{}
			if _, limited, err := Stream(w, body(), nil); err != nil || !limited || !bytes.Equal(w.Bytes(), blob) {
				t.Fatalf("Stream without a budget: limited %v, %v", limited, err)
			}
			if m := slices.Max(w.caps); m > smallStreamBufferSize {
				t.Errorf("a stream without a budget wrote from a %d-byte buffer", m)
			}
		})
	}
}

// TestStreamWithholdsFailedRead checks that bytes arriving together with
// a read error never reach the writer, for a body that is not hashed
// (a part of a blob).
func TestStreamWithholdsFailedRead(t *testing.T) {
	t.Parallel()
	errReset := errors.New("connection reset")
	body := &scriptedBody{script: []read{{data: []byte("0123456789")}, {data: []byte("abcdef"), err: errReset}}}
	var out bytes.Buffer
	n, _, err := Stream(&out, body, NewStreamBudget(1<<30))
	if !errors.Is(err, errReset) {
		t.Fatalf("err = %v, want the read error", err)
	}
	if n != 10 || out.String() != "0123456789" {
		t.Fatalf("wrote %d bytes %q, want only those read cleanly", n, out.String())
	}
}

// countWrites counts the writes it is given.
type countWrites struct {
	bytes.Buffer
	writes int
}

func (c *countWrites) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

// TestStreamGathersSmallReads checks that a body read in TLS-record-sized
// pieces reaches the writer (and the hasher) in chunks of at least
// streamChunkMin bytes on large buffers and whole small buffers otherwise,
// verified or not, with every byte in order.
func TestStreamGathersSmallReads(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 3*streamBufferSize+12345)
	for i := range blob {
		blob[i] = byte(i * 13)
	}
	for _, tc := range []struct {
		name     string
		budget   *StreamBudget
		verified bool
		chunk    int
	}{
		{"large buffers", NewStreamBudget(2 * streamBufferSize), true, streamChunkMin},
		{"small buffers", nil, true, smallStreamBufferSize},
		{"large buffers, part of a blob", NewStreamBudget(2 * streamBufferSize), false, streamChunkMin},
		{"small buffers, part of a blob", nil, false, smallStreamBufferSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var body io.Reader = &scriptedBody{script: chunks(blob, 16<<10, io.EOF)}
			if tc.verified {
				body = newVerifying(chunks(blob, 16<<10, io.EOF), blob)
			}
			var w countWrites
			n, _, err := Stream(&w, body, tc.budget)
			if err != nil || n != int64(len(blob)) || !bytes.Equal(w.Bytes(), blob) {
				t.Fatalf("Stream = %d, %v; wrote %d bytes, want the blob (%d)", n, err, w.Len(), len(blob))
			}
			// Until the first write, chunks are not gathered: up to two
			// small ones (the first is withheld until the second is read).
			if most := len(blob)/tc.chunk + 3; w.writes > most {
				t.Errorf("%d writes for %d bytes, want at most %d (chunks of %d bytes)", w.writes, len(blob), most, tc.chunk)
			}
		})
	}
}

// TestStreamGatheredFailedRead checks that when a read fails while a
// chunk is being gathered, the bytes of the reads before it are written
// and those that came with the error are not.
func TestStreamGatheredFailedRead(t *testing.T) {
	t.Parallel()
	errReset := errors.New("connection reset")
	part := make([]byte, 10+40<<10)
	for i := range part {
		part[i] = byte(i * 3)
	}
	body := &scriptedBody{script: []read{{data: part[:10]}, {data: part[10 : 10+16<<10]}, {data: part[10+16<<10 : 10+32<<10]}, {data: part[10+32<<10:], err: errReset}}}
	var out bytes.Buffer
	n, _, err := Stream(&out, body, NewStreamBudget(1<<30))
	if !errors.Is(err, errReset) {
		t.Fatalf("err = %v, want the read error", err)
	}
	if want := part[:10+32<<10]; n != int64(len(want)) || !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("wrote %d bytes, want the %d read cleanly", n, len(want))
	}
}
