package upstream

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStreamVerified streams a 64 MiB blob over loopback the way the
// proxy does: an upstream server (plain HTTP or TLS), OpenBlob and Stream
// into a server's ResponseWriter (wrapped, as the proxy's is, so its
// ReadFrom is hidden), and a client that discards the answer or hashes it
// and checks the digest, as crane and containerd do. All three share the
// process, so the CPU per GiB it reports is theirs together (TLS on both
// of its ends included). chunks/MiB counts the proxy's writes to the
// client, one per chunk handed to the hasher. A CPU profile of it shows
// the whole copy path.
func BenchmarkStreamVerified(b *testing.B) {
	blob := make([]byte, 64<<20)
	_, _ = rand.Read(blob)
	digest := sha256Hash(blob)
	serveBlob := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob)
	})
	for _, scheme := range []string{"http", "https"} {
		var up *httptest.Server
		if scheme == "https" {
			up = httptest.NewTLSServer(serveBlob)
		} else {
			up = httptest.NewServer(serveBlob)
		}
		b.Cleanup(up.Close)
		// Insecure skips verifying the test server's certificate.
		c, err := New(Config{Name: "bench", URL: up.URL, Insecure: true})
		if err != nil {
			b.Fatal(err)
		}
		budget := NewStreamBudget(16 << 20)
		var writes atomic.Int64
		proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			resp, err := c.OpenBlob(r.Context(), http.MethodGet, "app", digest, int64(len(blob)), nil)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
			if _, _, err := Stream(&countingWriter{w: w, n: &writes}, resp.Body, budget); err != nil {
				panic(http.ErrAbortHandler)
			}
		}))
		b.Cleanup(proxy.Close)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ReadBufferSize = 256 << 10
		client := &http.Client{Transport: tr}
		for _, mode := range []string{"discard", "sha256"} {
			b.Run("upstream="+scheme+"/client="+mode, func(b *testing.B) {
				b.SetBytes(int64(len(blob)))
				buf := make([]byte, 256<<10)
				writes.Store(0)
				cpu0, sys0 := rusage()
				for b.Loop() {
					resp, err := client.Get(proxy.URL + "/blob")
					if err != nil {
						b.Fatal(err)
					}
					h := sha256.New()
					var w io.Writer = io.Discard
					if mode == "sha256" {
						w = h
					}
					n, err := io.CopyBuffer(w, resp.Body, buf)
					resp.Body.Close()
					if err != nil || n != int64(len(blob)) {
						b.Fatalf("%d bytes, %v", n, err)
					}
					if mode == "sha256" && hex.EncodeToString(h.Sum(nil)) != digest.Hex {
						b.Fatal("the client got bytes that are not the blob")
					}
				}
				cpu1, sys1 := rusage()
				mib := float64(b.N) * float64(len(blob)) / (1 << 20)
				b.ReportMetric(float64(cpu1-cpu0)/float64(time.Millisecond)/(mib/1024), "cpu-ms/GiB")
				b.ReportMetric(float64(sys1-sys0)/float64(time.Millisecond)/(mib/1024), "sys-ms/GiB")
				b.ReportMetric(float64(writes.Load())/mib, "chunks/MiB")
			})
		}
	}
}

// countingWriter counts the writes that reach the client.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.w.Write(p)
}

// rusage is the process's user+system and system CPU so far.
func rusage() (cpu, sys time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), time.Duration(ru.Stime.Nano())
}
