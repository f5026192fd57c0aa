package upstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
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
// WriteTo has returned, so every path below doubles as a leak check.
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

	for _, tc := range []struct {
		name   string
		script []read
		want   []byte // the blob the digest names
		w      *limitedWriter
		err    error // nil: the whole blob is written
		// maxOut bounds what may reach the writer on failure.
		maxOut int
	}{
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
		{name: "upstream error", script: []read{{data: blob[:200_000]}, {data: blob[200_000:300_000], err: errReset}}, want: blob, err: errReset, maxOut: 200_000},
		{name: "writer error", script: chunks(blob, 100_000, io.EOF), want: blob, w: &limitedWriter{max: 150_000}, err: errWriterGone, maxOut: 150_000},
		{name: "short write", script: chunks(blob, 100_000, io.EOF), want: blob, w: &limitedWriter{max: 150_000, short: true}, err: io.ErrShortWrite, maxOut: 150_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var sent []byte
			for _, r := range tc.script {
				sent = append(sent, r.data...)
			}
			synctest.Test(t, func(t *testing.T) {
				v := newVerifying(tc.script, tc.want)
				w := tc.w
				if w == nil {
					w = &limitedWriter{max: len(blob) + 1}
				}
				n, err := v.WriteTo(w)
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
		})
	}
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
