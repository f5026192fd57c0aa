package proxy

import (
	"bytes"
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
	target := front.URL + "/v2/acme/app/blobs/" + d.String() + "?ns=docker.io"
	b.SetBytes(int64(len(blob)))
	b.ReportAllocs()
	// CPU per GiB (client, proxy and upstream together, as they share the
	// process) is steadier than MB/s on a loaded machine and shows what
	// the hashing and copying cost, not only how well they overlap.
	cpu0 := processCPU()
	defer func() {
		b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Millisecond)/(float64(b.N)*float64(len(blob))/(1<<30)), "cpu-ms/GiB")
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
type blobBehaviours map[string]func(w http.ResponseWriter)

func (b blobBehaviours) serve(w http.ResponseWriter, r *http.Request) {
	i := strings.LastIndex(r.URL.Path, "/")
	f, ok := b[r.URL.Path[i+1:]]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	f(w)
}

func withLength(body []byte) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}
}

func chunked(body []byte) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.WriteHeader(http.StatusOK)
		for len(body) > 0 {
			n := min(len(body), 100_000)
			_, _ = w.Write(body[:n])
			w.(http.Flusher).Flush()
			body = body[n:]
		}
	}
}

// cutAfter announces body but closes the connection after n bytes.
func cutAfter(body []byte, n int) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
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
		serve func(http.ResponseWriter)
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
}

// processCPU is the user plus system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
