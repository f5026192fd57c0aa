package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// tcpPair is a connected loopback TCP pair: sendfile needs a real socket.
func tcpPair(t *testing.T) (server *net.TCPConn, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close(); client.Close() })
	return s.(*net.TCPConn), client
}

func sendfileConn(t *testing.T, idle time.Duration) (*clientConn, net.Conn, *metrics) {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	server, client := tcpPair(t)
	l := newClientListener(nil, 1, idle, m, zap.NewNop())
	l.slots <- struct{}{}
	return &clientConn{Conn: server, l: l}, client, m
}

func tempFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, b
}

// TestClientConnSendfile: a cached file, whole or under the limit
// http.ServeContent puts on a range, reaches the client byte for byte
// and is counted as written; the file offset and the limit move as io
// expects.
func TestClientConnSendfile(t *testing.T) {
	t.Parallel()
	const size = 9<<20 + 123 // more than two chunks
	for _, tc := range []struct {
		name        string
		off, length int64 // length -1: the whole rest, no limit
	}{
		{"whole file", 0, -1},
		{"range", 1<<20 + 7, 5<<20 + 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, client, _ := sendfileConn(t, time.Minute)
			f, want := tempFile(t, size)
			if _, err := f.Seek(tc.off, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			want = want[tc.off:]
			var src io.Reader = f
			var lr *io.LimitedReader
			if tc.length >= 0 {
				want = want[:tc.length]
				lr = &io.LimitedReader{R: f, N: tc.length}
				src = lr
			}
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
				got <- b
			}()
			n, err := c.ReadFrom(src)
			if err != nil || n != int64(len(want)) {
				t.Fatalf("ReadFrom = %d, %v; want %d", n, err, len(want))
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("client got %d bytes, not the file's", len(b))
			}
			if c.bytesWritten() != n {
				t.Errorf("bytesWritten %d, want %d", c.bytesWritten(), n)
			}
			if lr != nil && lr.N != 0 {
				t.Errorf("limit left at %d, want 0", lr.N)
			}
		})
	}
}

// TestClientConnSendfileStall: a client that stops reading a file sent
// with sendfile is dropped at the idle timeout and counted, as for
// streamed bytes; a file is never a way around the idle deadline.
func TestClientConnSendfileStall(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	c, _, m := sendfileConn(t, idle)
	f, _ := tempFile(t, 64<<20) // far more than the socket buffers
	start := time.Now()
	n, err := c.ReadFrom(f)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom to a client that reads nothing = %d, %v; want the idle deadline", n, err)
	}
	if n >= 64<<20 {
		t.Fatalf("sent all %d bytes to a client that reads nothing", n)
	}
	if d := time.Since(start); d < idle {
		t.Errorf("dropped after %v, before the idle timeout %v", d, idle)
	}
	if v := counterOf(m.clientStalled); v != 1 {
		t.Errorf("stalled counter %v, want 1", v)
	}
}

// TestBlobCacheSendfile: a blob served from the verified blob cache over
// a real registry listener leaves through sendfile(2), byte for byte,
// ranges included; the first pull, streamed and hashed, does not.
func TestBlobCacheSendfile(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	weights := make([]byte, 3<<20)
	_, _ = rand.Read(weights)
	m := reg.pushModel(t, "acme/model", "v1", string(weights))
	bc := newTestBlobCache(t, t.TempDir())
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithBlobCache(bc))
	addr := startServe(t, p, ServeConfig{})
	get := func(path string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if resp, _ := get(manifestPath("acme/model", "v1")); resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest = %d", resp.StatusCode)
	}
	layer := m.weights[0]
	if resp, b := get(blobPath("acme/model", layer)); resp.StatusCode != http.StatusOK || !bytes.Equal(b, weights) {
		t.Fatalf("first pull = %d, %d bytes", resp.StatusCode, len(b))
	}
	// The first pull reads the cache file as the fetch writes it (and the
	// fetch releases its last bytes only once they matched the digest):
	// that file is sent with sendfile too, past the sniffed 512 bytes.
	if v := metricNow(t, p, "portcullis_client_sendfile_bytes_total"); v < float64(len(weights)-512) {
		t.Errorf("the first pull sent %v bytes of the growing cache file with sendfile, want at least %d", v, len(weights)-512)
	}
	// Wait for the fetch to commit to the cache.
	deadline := time.Now().Add(10 * time.Second)
	for metricNow(t, p, "portcullis_blob_cache_hits_total") == 0 && time.Now().Before(deadline) {
		if resp, b := get(blobPath("acme/model", layer)); resp.StatusCode != http.StatusOK || !bytes.Equal(b, weights) {
			t.Fatalf("pull = %d, %d bytes", resp.StatusCode, len(b))
		}
	}
	before := metricNow(t, p, "portcullis_client_sendfile_bytes_total")
	if resp, b := get(blobPath("acme/model", layer)); resp.StatusCode != http.StatusOK || !bytes.Equal(b, weights) {
		t.Fatalf("cached pull = %d, %d bytes", resp.StatusCode, len(b))
	}
	// net/http writes the first 512 bytes itself (content sniffing).
	if got := metricNow(t, p, "portcullis_client_sendfile_bytes_total") - before; got < float64(len(weights)-512) {
		t.Errorf("cached pull: %v bytes by sendfile, want at least %d", got, len(weights)-512)
	}
	resp, b := get(blobPath("acme/model", layer), "Range", "bytes=1000-2099999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, weights[1000:2100000]) {
		t.Errorf("cached range = %d, %d bytes", resp.StatusCode, len(b))
	}
}
