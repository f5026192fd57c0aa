package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestBlobClientDisconnect checks that a client leaving mid-blob cancels
// the upstream request and leaves no goroutine behind.
func TestBlobClientDisconnect(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	digest := sha([]byte("never completes"))
	upstreamGone := make(chan struct{}, 1)
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<30))
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.Method == http.MethodHead {
			return
		}
		for {
			if _, err := w.Write(chunk); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			if r.Context().Err() != nil {
				break
			}
		}
		upstreamGone <- struct{}{}
	})
	p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true}}, allowAll(), WithBlobGating(false))
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	defer front.Close()
	client := &http.Client{Transport: &http.Transport{}}
	target := front.URL + "/v2/acme/app/blobs/" + digest.String() + "?ns=docker.io"

	// Warm the upstream authentication so the baseline includes it.
	if resp, err := client.Head(target); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	baseline := settledGoroutines(0)

	resp, err := client.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()

	select {
	case <-upstreamGone:
	case <-time.After(30 * time.Second):
		t.Fatal("upstream request was not cancelled after the client left")
	}
	if n := settledGoroutines(baseline); n > baseline {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after the disconnect, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
	// The client left: nothing is held against the upstream.
	const want = `portcullis_upstream_errors_total{kind="blob_stream",upstream="docker.io"} 0`
	if m := do(p.AdminHandler(), http.MethodGet, "/metrics").Body.String(); !strings.Contains(m, want) {
		t.Errorf("a client that left was counted as an upstream error: /metrics lacks %q", want)
	}
}

// settledGoroutines waits (bounded) for the goroutine count to drop to
// target and returns the last count; target 0 just lets things settle.
func settledGoroutines(target int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 200; i++ {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if target > 0 && m <= target {
			return m
		}
		if target == 0 && m == n && i > 10 {
			return m
		}
		n = m
	}
	return n
}

func BenchmarkBlobStream(b *testing.B) {
	blob := bytes.Repeat([]byte("y"), 64<<20)
	d := sha(blob)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer up.Close()
	p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true}}, allowAll(), WithBlobGating(false))
	if err != nil {
		b.Fatal(err)
	}
	front := httptest.NewServer(p)
	defer front.Close()
	b.ReportAllocs()
	benchBlobGets(b, front.URL+"/v2/acme/app/blobs/"+d.String()+"?ns=docker.io", len(blob))
}

// benchBlobGets GETs target, a blob of size bytes, b.N times. CPU per GiB
// (client, proxy and upstream together, as they share the process) is
// steadier than MB/s on a loaded machine and shows what the hashing and
// copying cost, not only how well they overlap.
func benchBlobGets(b *testing.B, target string, size int) {
	b.SetBytes(int64(size))
	cpu0 := processCPU()
	defer func() {
		b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Millisecond)/(float64(b.N)*float64(size)/(1<<30)), "cpu-ms/GiB")
	}()
	for b.Loop() {
		resp, err := http.Get(target)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

// blobBehaviours is an upstream that answers each blob digest its own way:
// the right bytes, the wrong bytes, or a connection cut mid-body.
type blobBehaviours map[string]func(w http.ResponseWriter, r *http.Request)

func (b blobBehaviours) serve(w http.ResponseWriter, r *http.Request) {
	i := strings.LastIndex(r.URL.Path, "/")
	f, ok := b[r.URL.Path[i+1:]]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	f(w, r)
}

func withLength(body []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}
}

// chunked streams body without a Content-Length; like any registry, it
// gives the length on HEAD.
func chunked(body []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			return
		}
		w.WriteHeader(http.StatusOK)
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 100_000)
			_, _ = w.Write(rest[:n])
			w.(http.Flusher).Flush()
			rest = rest[n:]
		}
	}
}

// cutAfter announces body but closes the connection after n bytes.
func cutAfter(body []byte, n int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:n])
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
}

func testBlob(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

// TestBlobDigestMismatchNotDelivered checks that a client never receives
// the complete body of wrong bytes served under a digest, whether or not
// it checks digests itself, and that the event is logged and counted.
func TestBlobDigestMismatchNotDelivered(t *testing.T) {
	t.Parallel()
	blob := testBlob(3<<20+17, 1)
	lastTampered := append([]byte(nil), blob...)
	lastTampered[len(lastTampered)-1] ^= 0xff
	firstTampered := append([]byte(nil), blob...)
	firstTampered[0] ^= 0xff
	small := []byte("a small config blob")
	for _, tc := range []struct {
		name  string
		want  []byte // what the digest names
		serve func(http.ResponseWriter, *http.Request)
		sent  int // bytes the upstream sends
	}{
		{"last byte, content length", blob, withLength(lastTampered), len(blob)},
		{"first byte, content length", blob, withLength(firstTampered), len(blob)},
		{"last byte, chunked", blob, chunked(lastTampered), len(blob)},
		{"small blob", small, withLength([]byte("a small config blop")), len(small)},
		{"other blob of the same length", small, withLength(testBlob(len(small), 9)), len(small)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := sha(tc.want)
			up := fakeUpstream(t, blobBehaviours{d.String(): tc.serve}.serve)
			core, logs := observer.New(zapcore.WarnLevel)
			p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithLogger(zap.New(core)))
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)

			// A small body may be aborted before even the headers left
			// the proxy, so the request itself can fail; either way the
			// client must see an error and never the whole body.
			resp, err := http.Get(front.URL + "/v2/acme/app/blobs/" + d.String() + "?ns=docker.io")
			if err == nil {
				got, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr == nil {
					t.Fatalf("client read %d of %d bytes without an error", len(got), tc.sent)
				}
				if len(got) >= tc.sent {
					t.Fatalf("client received all %d bytes of the wrong blob", len(got))
				}
			}

			if n := logs.FilterMessage("blob stream failed").Len(); n != 1 {
				t.Errorf("%d warnings logged, want 1", n)
			}
			w := do(p.AdminHandler(), http.MethodGet, "/metrics")
			want := `portcullis_upstream_errors_total{kind="blob_digest_mismatch",upstream="docker.io"} 1`
			if !strings.Contains(w.Body.String(), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		})
	}
}

// TestBlobStreamNoLeftovers checks that every way a verified stream can
// end leaves no goroutine behind (the client leaving is
// TestBlobClientDisconnect). Not parallel: it counts goroutines.
func TestBlobStreamNoLeftovers(t *testing.T) {
	blob := testBlob(2<<20+5, 2)
	tampered := append([]byte(nil), blob...)
	tampered[len(tampered)/2] ^= 1
	good, bad, cut := sha(blob), sha(append([]byte("x"), blob...)), sha(append([]byte("y"), blob...))
	up := fakeUpstream(t, blobBehaviours{
		good.String(): withLength(blob),
		bad.String():  withLength(tampered),
		cut.String():  cutAfter(blob, 1<<20),
	}.serve)
	p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true}}, allowAll(), WithBlobGating(false))
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	defer front.Close()
	client := &http.Client{Transport: &http.Transport{}}
	url := func(d v1.Hash) string { return front.URL + "/v2/acme/app/blobs/" + d.String() + "?ns=docker.io" }

	// Warm the upstream authentication so the baseline includes it.
	if resp, err := client.Head(url(good)); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	client.CloseIdleConnections()

	for _, tc := range []struct {
		name   string
		digest v1.Hash
		ok     bool
	}{
		{"verified", good, true},
		{"mismatch", bad, false},
		{"upstream cut", cut, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			baseline := settledGoroutines(0)
			resp, err := client.Get(url(tc.digest))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.ok && (err != nil || !bytes.Equal(got, blob)) {
				t.Fatalf("verified blob: %d bytes, %v", len(got), err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("failed stream read cleanly (%d bytes)", len(got))
			}
			client.CloseIdleConnections()
			if n := settledGoroutines(baseline); n > baseline {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines after the stream, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
			}
		})
	}
	// Each failure is the upstream's, and counted as such.
	metrics := do(p.AdminHandler(), http.MethodGet, "/metrics").Body.String()
	for _, kind := range []string{"blob_digest_mismatch", "blob_stream"} {
		if want := fmt.Sprintf(`portcullis_upstream_errors_total{kind=%q,upstream="docker.io"} 1`, kind); !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// processCPU is the user plus system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// partialAnswer answers 206 with contentRange and body, and a
// Docker-Content-Digest the proxy must not pass on.
func partialAnswer(contentRange string, body []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Range", contentRange)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Docker-Content-Digest", bogusDigest)
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(body)
	}
}

const bogusDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// endless answers status with hdr and body, chunked, then junk until the
// proxy goes away (or, so that a proxy relaying it all fails the test
// rather than hang it, 8 MiB of it); a HEAD gets headLength as its
// Content-Length.
func endless(status int, hdr http.Header, body []byte, headLength int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(headLength))
			return
		}
		for k, v := range hdr {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		junk := bytes.Repeat([]byte("z"), 64<<10)
		for i := 0; i < 128 && r.Context().Err() == nil; i++ {
			if _, err := w.Write(junk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

// overlong announces body's length but sends more, on a raw connection (a
// net/http handler cannot write past its Content-Length).
func overlong(body, extra []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(body))
		_, _ = bw.Write(body)
		_, _ = bw.Write(extra)
		_ = bw.Flush()
	}
}

// TestBlobUntrustedUpstreamAnswers sends blob requests through the proxy
// to an upstream that lies with its status, range or length, and checks
// what the client receives: a 206 nobody asked for is refused before any
// byte; whatever covers the whole blob (a 200, to a Range request or not,
// or a 206 spanning it) is hashed and never completes when wrong; a real
// part is relayed as asked for; and no body runs past its length.
func TestBlobUntrustedUpstreamAnswers(t *testing.T) {
	t.Parallel()
	blob := testBlob(1<<20+333, 3)
	size := len(blob)
	tampered := append([]byte(nil), blob...)
	tampered[size/2] ^= 1
	whole := fmt.Sprintf("bytes 0-%d/%d", size-1, size)
	part := fmt.Sprintf("bytes 10-19/%d", size)
	for _, tc := range []struct {
		name   string
		rng    string // the client's Range, if any
		answer func(http.ResponseWriter, *http.Request)
		// A clean answer: its status, body and Content-Range.
		status       int
		body         []byte
		contentRange string
		// Otherwise the body must fail (or, refused, never start) with at
		// most maxBytes of it received.
		maxBytes int
		kind     string // the upstream error counted
	}{
		{name: "206 without Range", answer: partialAnswer(whole, blob),
			status: http.StatusBadGateway, kind: "unexpected_partial"},
		{name: "206 part without Range", answer: partialAnswer(part, blob[10:20]),
			status: http.StatusBadGateway, kind: "unexpected_partial"},
		{name: "206 whole range", rng: "bytes=0-", answer: partialAnswer(whole, blob),
			status: http.StatusPartialContent, body: blob, contentRange: whole},
		{name: "206 whole range, wrong bytes", rng: "bytes=0-", answer: partialAnswer(whole, tampered),
			maxBytes: size - 1, kind: "blob_digest_mismatch"},
		{name: "206 whole range, endless", rng: "bytes=0-",
			answer:   endless(http.StatusPartialContent, http.Header{"Content-Range": {whole}}, blob, 0),
			maxBytes: size - 1, kind: "blob_too_long"},
		{name: "206 part", rng: "bytes=10-19", answer: partialAnswer(part, blob[10:20]),
			status: http.StatusPartialContent, body: blob[10:20], contentRange: part},
		{name: "206 part, endless", rng: "bytes=10-19",
			answer:   endless(http.StatusPartialContent, http.Header{"Content-Range": {part}}, blob[10:20], 0),
			maxBytes: 10, kind: "blob_too_long"},
		{name: "200 to a Range request", rng: "bytes=10-19",
			answer: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Range", part) // a lie on a 200
				withLength(blob)(w, nil)
			},
			status: http.StatusOK, body: blob},
		{name: "200 to a Range request, wrong bytes", rng: "bytes=10-19", answer: withLength(tampered),
			maxBytes: size - 1, kind: "blob_digest_mismatch"},
		{name: "200 endless", answer: endless(http.StatusOK, nil, blob, size),
			maxBytes: size - 1, kind: "blob_too_long"},
		{name: "200 past its Content-Length", answer: overlong(blob, bytes.Repeat([]byte("z"), 1<<20)),
			status: http.StatusOK, body: blob},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := sha(blob)
			up := fakeUpstream(t, blobBehaviours{d.String(): tc.answer}.serve)
			core, logs := observer.New(zapcore.WarnLevel)
			p, _ := newTestProxy(t, up.URL, allowAll(), WithBlobGating(false), WithLogger(zap.New(core)))
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			client := &http.Client{Transport: &http.Transport{}}
			t.Cleanup(client.CloseIdleConnections)

			req, _ := http.NewRequest(http.MethodGet, front.URL+"/v2/acme/app/blobs/"+d.String()+"?ns=docker.io", nil)
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := client.Do(req)
			var got []byte
			var rerr error
			if err == nil {
				got, rerr = io.ReadAll(resp.Body)
				resp.Body.Close()
			}

			if tc.body != nil || tc.status == http.StatusBadGateway {
				if err != nil || rerr != nil {
					t.Fatalf("request failed: %v, %v", err, rerr)
				}
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, got)
				}
			}
			switch {
			case tc.status == http.StatusBadGateway:
				if !strings.Contains(string(got), `"code":"UNKNOWN"`) || bytes.Contains(got, blob[:16]) {
					t.Errorf("refusal body is not an error envelope: %.200q", got)
				}
				if n := logs.FilterMessage("upstream answered a whole-blob request with partial content").
					FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
					t.Errorf("%d errors logged, want 1: %v", n, logs.All())
				}
			case tc.body != nil:
				if !bytes.Equal(got, tc.body) {
					t.Fatalf("received %d bytes, not the %d expected", len(got), len(tc.body))
				}
				if cr := resp.Header.Get("Content-Range"); cr != tc.contentRange {
					t.Errorf("Content-Range %q, want %q", cr, tc.contentRange)
				}
				if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != d.String() {
					t.Errorf("Docker-Content-Digest %q, want the requested %s", dcd, d)
				}
			default:
				if len(got) > tc.maxBytes {
					t.Errorf("client received %d bytes, at most %d allowed", len(got), tc.maxBytes)
				}
				if tc.maxBytes >= size-1 && err == nil && rerr == nil {
					t.Errorf("client read %d bytes without an error", len(got))
				}
			}
			if tc.kind != "" {
				w := do(p.AdminHandler(), http.MethodGet, "/metrics")
				want := `portcullis_upstream_errors_total{kind="` + tc.kind + `",upstream="docker.io"} 1`
				if !strings.Contains(w.Body.String(), want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
		})
	}
}

// An empty blob (a layer may be one) is announced as 0 bytes on HEAD and
// GET alike, so a client never waits for a length it is not told.
func TestEmptyBlobLength(t *testing.T) {
	t.Parallel()
	empty := sha(nil)
	up := fakeUpstream(t, blobBehaviours{empty.String(): withLength(nil)}.serve)
	p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true}}, allowAll(), WithBlobGating(false))
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	defer front.Close()
	url := front.URL + "/v2/acme/app/blobs/" + empty.String() + "?ns=docker.io"
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || resp.ContentLength != 0 || len(body) != 0 || resp.Header.Get("Content-Length") != "0" {
			t.Errorf("%s: %s, Content-Length %q, %d bytes, %v", method, resp.Status, resp.Header.Get("Content-Length"), len(body), err)
		}
	}
}
