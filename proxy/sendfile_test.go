package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
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
	s := recv(t, accepted, "accepted")
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close(); client.Close() })
	return s.(*net.TCPConn), client
}

func sendfileConn(t *testing.T, idle time.Duration, sendfile bool) (*clientConn, net.Conn, *metrics) {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	server, client := tcpPair(t)
	l := newClientListener(nil, 1, idle, m, zap.NewNop())
	l.slots <- struct{}{}
	return &clientConn{Conn: server, l: l, sendfile: sendfile}, client, m
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
// and is counted as written, sent with sendfile or copied; the file
// offset and the limit move as io expects.
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
		for _, sendfile := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, sendfile %v", tc.name, sendfile), func(t *testing.T) {
				t.Parallel()
				c, client, m := sendfileConn(t, time.Minute, sendfile)
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
				wantSent := float64(n)
				if !sendfile {
					wantSent = 0
				}
				if v := counterOf(m.sendfileBytes); v != wantSent {
					t.Errorf("sendfile bytes %v, want %v", v, wantSent)
				}
			})
		}
	}
}

// TestClientConnSendfileStall: a client that stops reading a cached file
// is dropped at the idle timeout and counted, whether the file is sent
// with sendfile or copied, as for streamed bytes; a file is never a way
// around the idle deadline.
func TestClientConnSendfileStall(t *testing.T) {
	t.Parallel()
	for _, sendfile := range []bool{true, false} {
		t.Run(fmt.Sprintf("sendfile %v", sendfile), func(t *testing.T) {
			t.Parallel()
			const idle = 300 * time.Millisecond
			c, _, m := sendfileConn(t, idle, sendfile)
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
		})
	}
}

// TestBlobCacheSendfile: a blob served from the verified blob cache over
// a real registry listener reaches the client byte for byte, ranges
// included, and leaves through sendfile(2) only where the mode says: with
// "always", the growing file of the first pull and the cached file; with
// "auto" to a client on a loopback address, and with "never", neither.
func TestBlobCacheSendfile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode     SendfileMode
		sendfile bool
	}{
		{SendfileAlways, true},
		{SendfileAuto, false},
		{SendfileNever, false},
	} {
		t.Run(fmt.Sprint(tc.mode), func(t *testing.T) {
			t.Parallel()
			blobCacheSendfile(t, tc.mode, tc.sendfile)
		})
	}
}

func blobCacheSendfile(t *testing.T, mode SendfileMode, sendfile bool) {
	reg := newRegistry(t)
	weights := make([]byte, 3<<20)
	_, _ = rand.Read(weights)
	m := reg.pushModel(t, "acme/model", "v1", string(weights))
	bc := newTestBlobCache(t, t.TempDir())
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithBlobCache(bc))
	addr := startServe(t, p, ServeConfig{Sendfile: mode})
	// net/http writes the first 512 bytes itself (content sniffing).
	checkSent := func(what string, got float64) {
		t.Helper()
		if sendfile && got < float64(len(weights)-512) {
			t.Errorf("%s: %v bytes by sendfile, want at least %d", what, got, len(weights)-512)
		}
		if !sendfile && got != 0 {
			t.Errorf("%s: %v bytes by sendfile, want none", what, got)
		}
	}
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
	// that file is sent as a cached one is.
	checkSent("first pull", metricNow(t, p, "portcullis_client_sendfile_bytes_total"))
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
	checkSent("cached pull", metricNow(t, p, "portcullis_client_sendfile_bytes_total")-before)
	resp, b := get(blobPath("acme/model", layer), "Range", "bytes=1000-2099999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, weights[1000:2100000]) {
		t.Errorf("cached range = %d, %d bytes", resp.StatusCode, len(b))
	}
}

// TestSendfileMode: the config words map to the modes and back, anything
// else is refused, and "auto" copies for exactly the loopback peers.
func TestSendfileMode(t *testing.T) {
	t.Parallel()
	for _, m := range []SendfileMode{SendfileAuto, SendfileAlways, SendfileNever} {
		if got, err := ParseSendfileMode(m.String()); err != nil || got != m {
			t.Errorf("ParseSendfileMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	for _, bad := range []string{"", "Auto", "on", "true", "always "} {
		if _, err := ParseSendfileMode(bad); err == nil {
			t.Errorf("ParseSendfileMode(%q) accepted", bad)
		}
	}
	for _, tc := range []struct {
		ip                  string
		auto, always, never bool
	}{
		{"127.0.0.1", false, true, false},
		{"127.3.2.1", false, true, false},
		{"::1", false, true, false},
		{"::ffff:127.0.0.1", false, true, false},
		{"10.0.0.7", true, true, false},
		{"192.0.2.1", true, true, false},
		{"2001:db8::1", true, true, false},
	} {
		addr := &net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 40000}
		for m, want := range map[SendfileMode]bool{SendfileAuto: tc.auto, SendfileAlways: tc.always, SendfileNever: tc.never} {
			if got := m.sendfileTo(addr); got != want {
				t.Errorf("%v.sendfileTo(%s) = %v, want %v", m, tc.ip, got, want)
			}
		}
	}
	// Cancelled, so that a Serve that took the mode would return at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Serve(ctx, nil, ServeConfig{Addr: "127.0.0.1:0", Sendfile: SendfileNever + 1}); err == nil {
		t.Error("Serve took an unknown sendfile mode")
	}
}
