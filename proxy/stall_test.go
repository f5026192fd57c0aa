package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// stallEnv is the in-memory registry holding one image with a large
// layer, behind a proxy served by Serve, with the manifest already pulled
// so the layer is an allowed blob. The registry reports when a connection
// that served the layer closes.
type stallEnv struct {
	p        *Proxy
	addr     string
	upstream string // host:port of the registry
	blob     []byte
	layer    v1.Hash
	logs     *observer.ObservedLogs
	mu       sync.Mutex
	blobBy   map[string]bool // upstream-side remote addresses of layer GETs
	closed   chan string     // such a connection closed
}

func newStallEnv(t testing.TB, size int, sc ServeConfig, opts ...Option) *stallEnv {
	t.Helper()
	e := &stallEnv{blob: testBlob(size, 7), blobBy: map[string]bool{}, closed: make(chan string, 1)}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+e.layer.String()) {
			e.mu.Lock()
			e.blobBy[r.RemoteAddr] = true
			e.mu.Unlock()
		}
		reg.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s != http.StateClosed {
			return
		}
		e.mu.Lock()
		served := e.blobBy[c.RemoteAddr().String()]
		e.mu.Unlock()
		if served {
			select {
			case e.closed <- c.RemoteAddr().String():
			default: // the tests wait for the first only
			}
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	e.upstream = strings.TrimPrefix(srv.URL, "http://")

	e.layer = pushLayerImage(t, srv.URL, e.blob)

	core, logs := observer.New(zapcore.InfoLevel)
	e.logs = logs
	e.p, _ = newTestProxy(t, srv.URL, allowAll(), append([]Option{WithLogger(zap.New(core))}, opts...)...)
	if w := do(e.p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("manifest: %d %s", w.Code, w.Body)
	}
	e.addr = startServe(t, e.p, sc)
	return e
}

func (e *stallEnv) blobTarget() string {
	return "/v2/acme/app/blobs/" + e.layer.String() + "?ns=docker.io"
}

// dialSmallWindow connects with a 4 KiB receive buffer, so a client that
// does not read stops the proxy's writes after little data instead of
// after the megabytes loopback buffers can take.
func dialSmallWindow(t testing.TB, addr string) net.Conn {
	t.Helper()
	return dialWindow(t, addr, 4096)
}

func dialWindow(t testing.TB, addr string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStalledClientDropped requests an allowed 16 MiB blob on a raw
// connection and never reads: the proxy drops the connection after the
// idle timeout, closes the upstream connection that was feeding it, gives
// the stream's buffers back, counts and logs the stall.
func TestStalledClientDropped(t *testing.T) {
	t.Parallel()
	e := newStallEnv(t, 16<<20, ServeConfig{ClientIdleTimeout: 300 * time.Millisecond})
	c := dialSmallWindow(t, e.addr)
	rawRequest(t, c, e.blobTarget())

	awaitCond(t, "the stalled client to be counted", func() bool {
		return metricNow(t, e.p, "portcullis_client_stalled_total") == 1
	})
	awaitCond(t, "the stall to be logged", func() bool {
		return e.logs.FilterMessage("client stalled: blob stream dropped").Len() == 1
	})
	entry := e.logs.FilterMessage("client stalled: blob stream dropped").All()[0]
	fields := entry.ContextMap()
	if entry.Level != zapcore.InfoLevel || fields["repository"] != "acme/app" || fields["digest"] != e.layer.String() ||
		fields["client"] != c.LocalAddr().String() {
		t.Errorf("stall log entry %v %v", entry.Level, fields)
	}
	if sent, _ := fields["bytes"].(int64); sent <= 0 || sent >= int64(len(e.blob)) {
		t.Errorf("stall logged with %v bytes sent, want some of the %d", fields["bytes"], len(e.blob))
	}
	select {
	case <-e.closed:
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream connection serving the blob was not closed")
	}
	awaitCond(t, "the stream buffers to be given back", func() bool {
		return e.p.opts.streamBudget.InUse() == 0
	})

	// What the kernel had buffered is there to read, then the end: the
	// proxy closed the connection.
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after the stall: %v", err)
	}
	if n >= int64(len(e.blob)) {
		t.Fatalf("the stalled client received %d bytes, the whole blob", n)
	}
}

// TestSlowReaderNotDropped reads an allowed blob slowly but steadily, for
// several times the idle timeout in all: the client is served the whole
// verified blob and nothing is counted as a stall. (That a single write
// outlasting the timeout survives while the client takes bytes is
// TestClientConnIdleDeadline's "slow reader".)
func TestSlowReaderNotDropped(t *testing.T) {
	t.Parallel()
	e := newStallEnv(t, 2<<20, ServeConfig{ClientIdleTimeout: 300 * time.Millisecond})
	c := dialWindow(t, e.addr, 16<<10)
	rawRequest(t, c, e.blobTarget())
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))

	// About 1.6 MB/s, never pausing for more than a thirtieth of the idle
	// timeout.
	br := &slowReader{r: c, chunk: 16 << 10, pause: 10 * time.Millisecond}
	resp, err := http.ReadResponse(bufio.NewReader(br), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("slow reader cut after %d bytes: %v", len(body), err)
	}
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || hex.EncodeToString(sum[:]) != e.layer.Hex {
		t.Fatalf("status %d, %d bytes that are not the blob", resp.StatusCode, len(body))
	}
	if v := metricNow(t, e.p, "portcullis_client_stalled_total"); v != 0 {
		t.Errorf("stalled counter %v for a steady reader", v)
	}
}

// slowReader hands out at most chunk bytes per Read, pausing before each.
type slowReader struct {
	r     io.Reader
	chunk int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), s.chunk)])
}

// TestStalledStreamsHoldBoundedBuffers stalls more streams than the
// stream buffer budget has room for: the large buffers held never exceed
// the budget, the streams beyond it are counted as running on small
// buffers, and everything is given back once the clients are dropped.
func TestStalledStreamsHoldBoundedBuffers(t *testing.T) {
	t.Parallel()
	const streams = 4
	const budget = 2 << 20 // one stream's pair of large buffers
	e := newStallEnv(t, 16<<20, ServeConfig{ClientIdleTimeout: 500 * time.Millisecond}, WithStreamBufferBudget(budget))
	for range streams {
		rawRequest(t, dialSmallWindow(t, e.addr), e.blobTarget())
	}
	var most int64
	awaitCond(t, "every stalled client to be dropped", func() bool {
		most = max(most, e.p.opts.streamBudget.InUse())
		return metricNow(t, e.p, "portcullis_client_stalled_total") == streams
	})
	if most > budget {
		t.Errorf("stalled streams held %d bytes of large buffers, budget %d", most, budget)
	}
	awaitCond(t, "every stream to end", func() bool {
		return e.logs.FilterMessage("client stalled: blob stream dropped").Len() == streams
	})
	// At most two streams can have had a large buffer (one each, or one
	// both); the others ran on small ones and say so.
	if v := metricNow(t, e.p, "portcullis_stream_buffer_budget_exhausted_total"); v < streams-1 {
		t.Errorf("%v streams counted on small buffers, want at least %d", v, streams-1)
	}
	if n := e.logs.FilterMessage("stream buffer budget in use: blob streams beyond it run on small buffers").Len(); n != 1 {
		t.Errorf("budget exhaustion logged %d times, want once", n)
	}
	awaitCond(t, "the budget to be given back", func() bool { return e.p.opts.streamBudget.InUse() == 0 })
}

// BenchmarkStalledStreamMemory measures what a stalled blob stream costs:
// heap and stacks of the whole process (client, proxy, upstream) with n
// clients that requested a 16 MiB blob and stopped reading, through the
// proxy and, as the baseline, straight from the upstream; the difference
// is the proxy's share. Run with -benchtime=1x.
func BenchmarkStalledStreamMemory(b *testing.B) {
	const n = 200
	for _, budget := range []int64{0, DefaultStreamBufferBudget} {
		b.Run(fmt.Sprintf("budget=%dMiB", budget>>20), func(b *testing.B) {
			e := newStallEnv(b, 16<<20, ServeConfig{MaxConns: 2 * n}, WithStreamBufferBudget(budget))
			upstreamPath := "/v2/acme/app/blobs/" + e.layer.String()
			for b.Loop() {
				direct := stalledCost(b, e.upstream, upstreamPath, n)
				proxied := stalledCost(b, e.addr, e.blobTarget(), n)
				b.ReportMetric(float64(direct)/n, "B/stall-direct")
				b.ReportMetric(float64(proxied)/n, "B/stall-proxied")
				b.ReportMetric(float64(proxied-direct)/n, "B/stall-proxy-share")
			}
		})
	}
}

// stalledCost opens n stalled requests for target at addr and returns the
// growth of heap and stack in use once they have settled.
func stalledCost(b *testing.B, addr, target string, n int) int64 {
	inUse := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapInuse + ms.StackInuse)
	}
	before := inUse()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialSmallWindow(b, addr)
		rawRequest(b, conns[i], target)
	}
	// Let every stream fill what the sockets take and block.
	time.Sleep(2 * time.Second)
	cost := inUse() - before
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(time.Second)
	return cost
}

// BenchmarkBlobStreamServe is BenchmarkBlobStream through Serve's
// listener (connection cap, per-write idle deadline), on large buffers
// (the default budget) and on small ones only (budget 0).
func BenchmarkBlobStreamServe(b *testing.B) {
	blob := testBlob(64<<20, 5)
	d := sha(blob)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer up.Close()
	for _, budget := range []int64{DefaultStreamBufferBudget, 0} {
		b.Run(fmt.Sprintf("budget=%dMiB", budget>>20), func(b *testing.B) {
			p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true}}, allowAll(),
				WithBlobGating(false), WithStreamBufferBudget(budget))
			if err != nil {
				b.Fatal(err)
			}
			benchBlobGets(b, "http://"+startServe(b, p, ServeConfig{})+"/v2/acme/app/blobs/"+d.String()+"?ns=docker.io", len(blob))
		})
	}
}

// pushLayerImage pushes acme/app:v1, an image of the single layer blob, to
// the registry at url and returns the layer's digest.
func pushLayerImage(t testing.TB, url string, blob []byte) v1.Hash {
	t.Helper()
	layer := static.NewLayer(blob, types.OCIUncompressedLayer)
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	d, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(url, "http://")+"/acme/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return d
}
