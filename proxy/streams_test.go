package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeStreamConn is a client connection stalled for a set time.
type fakeStreamConn struct {
	stalled time.Duration
	dropped int
}

func (f *fakeStreamConn) stalledFor(time.Time) time.Duration { return f.stalled }
func (f *fakeStreamConn) bytesWritten() int64                { return 0 }
func (f *fakeStreamConn) drop() bool                         { f.dropped++; return f.dropped == 1 }

// TestStreamTableAdmit pins which stream a new one may evict: only when
// the upstream's streams fill its cap, only a client stalled for the
// grace or longer, the longest stalled first, never with eviction off.
func TestStreamTableAdmit(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	now := time.Now()
	newStream := func(up string, stalled time.Duration) *stream {
		return &stream{upstream: up, conn: &fakeStreamConn{stalled: stalled}}
	}
	fill := func(tab *streamTable, up string, stalls ...time.Duration) []*stream {
		var ss []*stream
		for _, d := range stalls {
			s := newStream(up, d)
			if v, _ := tab.admit(s, 0, grace, now); v != nil {
				t.Fatal("evicted while filling")
			}
			ss = append(ss, s)
		}
		return ss
	}

	t.Run("longest stalled past the grace", func(t *testing.T) {
		tab := newStreamTable()
		ss := fill(tab, "a", 0, 3*time.Second, 2*grace, grace/2)
		v, d := tab.admit(newStream("a", 0), 4, grace, now)
		if v != ss[1] || d != 3*time.Second || !ss[1].wasEvicted() {
			t.Fatalf("evicted %v after %v, want the stream stalled 3s", v, d)
		}
		// The evicted stream no longer counts; its own removal is a no-op.
		tab.remove(ss[1])
		if n := tab.count("a"); n != 4 {
			t.Fatalf("%d streams registered, want 4", n)
		}
		// Now full again: the next longest past the grace goes.
		if v, _ := tab.admit(newStream("a", 0), 4, grace, now); v != ss[2] {
			t.Fatalf("second eviction took %v, want the stream stalled 2s", v)
		}
		// The rest are under the grace or reading.
		if v, _ := tab.admit(newStream("a", 0), 4, grace, now); v != nil {
			t.Fatalf("evicted a stream stalled %v, under the grace", v.conn.stalledFor(now))
		}
	})

	t.Run("exactly the grace, first of equals", func(t *testing.T) {
		tab := newStreamTable()
		ss := fill(tab, "a", grace, grace)
		v, d := tab.admit(newStream("a", 0), 2, grace, now)
		if v == nil || d != grace {
			t.Fatalf("evicted %v after %v, want a stream stalled exactly the grace", v, d)
		}
		// Of two equally stalled streams one goes and the other stays.
		if ss[0].wasEvicted() == ss[1].wasEvicted() {
			t.Fatalf("evicted flags %v, %v: want exactly one", ss[0].wasEvicted(), ss[1].wasEvicted())
		}
	})

	t.Run("below the cap", func(t *testing.T) {
		tab := newStreamTable()
		fill(tab, "a", time.Hour)
		fill(tab, "b", time.Hour, time.Hour)
		if v, _ := tab.admit(newStream("a", 0), 2, grace, now); v != nil {
			t.Fatal("evicted with a connection free for the upstream")
		}
	})

	t.Run("eviction off", func(t *testing.T) {
		tab := newStreamTable()
		fill(tab, "a", time.Hour, time.Hour)
		if v, _ := tab.admit(newStream("a", 0), 2, 0, now); v != nil {
			t.Fatal("evicted with a grace of 0")
		}
		if v, _ := tab.admit(newStream("a", 0), 0, grace, now); v != nil {
			t.Fatal("evicted with no known connection cap")
		}
	})

	t.Run("waiting", func(t *testing.T) {
		tab := newStreamTable()
		ss := fill(tab, "a", 0, grace/2)
		w := newStream("a", 0)
		if v, _ := tab.admit(w, 2, grace, now); v != nil {
			t.Fatal("evicted a stream under the grace")
		}
		// Later, one of the streams holding a connection has stalled.
		ss[1].conn.(*fakeStreamConn).stalled = 2 * grace
		w.conn.(*fakeStreamConn).stalled = time.Hour // never its own victim
		if v, _ := tab.evict(w, 2, grace, now); v != ss[1] {
			t.Fatalf("evicted %v for the waiting stream, want the stalled one", v)
		}
		// Its own stream is not counted among the others holding one:
		// with one other left, a connection is free.
		ss[0].conn.(*fakeStreamConn).stalled = 2 * grace
		if v, _ := tab.evict(w, 2, grace, now); v != nil {
			t.Fatal("evicted below the cap")
		}
		tab.remove(w)
		if v, _ := tab.evict(w, 0, grace, now); v != nil {
			t.Fatal("evicted for a stream no longer registered")
		}
	})

	t.Run("remove", func(t *testing.T) {
		tab := newStreamTable()
		ss := fill(tab, "a", 0, 0)
		tab.remove(nil)
		tab.remove(ss[0])
		tab.remove(ss[0])
		if n := tab.count("a"); n != 1 {
			t.Fatalf("%d streams registered, want 1", n)
		}
		if (*stream)(nil).wasEvicted() {
			t.Fatal("nil stream reported evicted")
		}
	})

	if _, err := New([]Upstream{{Name: "r", URL: "https://r.example"}}, allowAll(), WithClientStallGrace(-time.Second)); err == nil {
		t.Error("a negative client stall grace was accepted")
	}
	if progressTick(0) != 0 || progressTick(time.Second) != 250*time.Millisecond ||
		progressTick(time.Minute) != maxProgressTick || progressTick(time.Millisecond) != minProgressTick {
		t.Errorf("progress ticks %v %v %v %v", progressTick(0), progressTick(time.Second), progressTick(time.Minute), progressTick(time.Millisecond))
	}
}

// TestClientConnStalledFor drives the connection wrapper on a fake clock:
// a write the client takes nothing of is stalled for as long as it has
// been blocked; a client that takes a little every 100 ms is never seen
// stalled for more than about a tick, even inside one long write; drop
// fails the blocked write at once.
func TestClientConnStalledFor(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c, client, _ := pipeConn(t, time.Hour)
		defer client.Close()
		c.l.tick = progressTick(time.Second)
		if d := c.stalledFor(time.Now()); d != 0 {
			t.Fatalf("stalled for %v with no write", d)
		}

		done := make(chan error, 1)
		go func() {
			_, err := c.Write(make([]byte, 64<<10))
			done <- err
		}()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if d := c.stalledFor(time.Now()); d != 10*time.Second {
			t.Fatalf("stalled for %v after 10s taking nothing, want 10s", d)
		}

		buf := make([]byte, 100)
		most := time.Duration(0)
		for i := range 50 {
			if _, err := io.ReadFull(client, buf); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			// The first progress is seen at the end of the tick it
			// happened in.
			if i >= 3 {
				most = max(most, c.stalledFor(time.Now()))
			}
		}
		if most > c.l.tick+100*time.Millisecond {
			t.Fatalf("a client reading every 100ms seen stalled for %v (tick %v)", most, c.l.tick)
		}

		if !c.drop() {
			t.Fatal("drop did not close the connection")
		}
		if err := <-done; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked write ended with %v after drop, want the connection closed", err)
		}
		if d := c.stalledFor(time.Now()); d != 0 {
			t.Fatalf("stalled for %v after the write ended", d)
		}
		if c.drop() {
			t.Fatal("second drop reported closing the connection")
		}
	})
}

// TestClientConnInContext: a request's context carries the *clientConn it
// arrived on, also when TLS wraps it.
func TestClientConnInContext(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	defer client.Close()
	cc := &clientConn{Conn: server}
	if got := clientConnFrom(withClientConn(context.Background(), cc)); got != cc {
		t.Fatalf("plain connection: %v", got)
	}
	tc := tls.Server(cc, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	if got := clientConnFrom(withClientConn(context.Background(), tc)); got != cc {
		t.Fatalf("TLS connection: %v", got)
	}
	if got := clientConnFrom(withClientConn(context.Background(), server)); got != nil {
		t.Fatalf("a connection not accepted by Serve: %v", got)
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// evictEnv is a real registry holding an image with a large layer, behind
// a proxy whose upstream uses the default transport with a cap of
// maxConns connections per pool, served by Serve. The manifest is pulled,
// so the layer is an allowed blob.
type evictEnv struct {
	p     *Proxy
	addr  string
	blob  []byte
	layer v1.Hash
	logs  *observer.ObservedLogs
}

func newEvictEnv(t *testing.T, size, maxConns int, timeout, grace time.Duration) *evictEnv {
	t.Helper()
	e := &evictEnv{blob: testBlob(size, 9)}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	e.layer = pushLayerImage(t, srv.URL, e.blob)
	core, logs := observer.New(zapcore.InfoLevel)
	e.logs = logs
	var err error
	e.p, err = New([]Upstream{{Name: "docker.io", URL: srv.URL, Insecure: true, MaxConns: maxConns, Timeout: timeout}},
		allowAll(), WithLogger(zap.New(core)), WithClientStallGrace(grace))
	if err != nil {
		t.Fatal(err)
	}
	if w := do(e.p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("manifest: %d %s", w.Code, w.Body)
	}
	e.addr = startServe(t, e.p, ServeConfig{})
	return e
}

func (e *evictEnv) blobURL() string {
	return "http://" + e.addr + "/v2/acme/app/blobs/" + e.layer.String() + "?ns=docker.io"
}

// stalled counts docker.io's streams whose client has taken nothing for
// at least d.
func (e *evictEnv) stalled(d time.Duration) int {
	n := 0
	for _, s := range e.streamsOf() {
		if s.conn.stalledFor(time.Now()) >= d {
			n++
		}
	}
	return n
}

// streamsOf lists docker.io's registered streams.
func (e *evictEnv) streamsOf() []*stream {
	tab := e.p.streams
	tab.mu.Lock()
	defer tab.mu.Unlock()
	var ss []*stream
	for s := range tab.byUpstream["docker.io"] {
		ss = append(ss, s)
	}
	return ss
}

// pull fetches the blob on a fresh connection and checks it is the blob.
func (e *evictEnv) pull(t *testing.T) int {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(e.blobURL())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("pull cut after %d bytes: %v", len(body), err)
	}
	if resp.StatusCode == http.StatusOK {
		if sum := sha256.Sum256(body); hex.EncodeToString(sum[:]) != e.layer.Hex {
			t.Fatalf("200 with %d bytes that are not the blob", len(body))
		}
	}
	return resp.StatusCode
}

// TestStalledStreamEvictedForWaitingPull: two clients request an allowed
// 32 MiB blob and stop reading, holding both stream connections of an
// upstream capped at 2. A third client's pull drops the client stalled
// longest (past the 200 ms grace, long before the 60 s idle timeout) and
// is served the whole blob, instead of waiting for a connection until the
// upstream timeout. The other stalled client keeps its stream.
func TestStalledStreamEvictedForWaitingPull(t *testing.T) {
	t.Parallel()
	const grace = 200 * time.Millisecond
	e := newEvictEnv(t, 32<<20, 2, 20*time.Second, grace)
	raw := map[string]net.Conn{}
	for range 2 {
		c := dialSmallWindow(t, e.addr)
		rawRequest(t, c, "/v2/acme/app/blobs/"+e.layer.String()+"?ns=docker.io")
		raw[c.LocalAddr().String()] = c
	}
	awaitCond(t, "both clients to stall past the grace", func() bool { return e.stalled(grace) == 2 })

	if code := e.pull(t); code != http.StatusOK {
		t.Fatalf("pull while stalled clients hold the stream connections: status %d, want 200", code)
	}
	if v := metricNow(t, e.p, "portcullis_client_streams_evicted_total"); v != 1 {
		t.Fatalf("evicted counter %v, want 1", v)
	}
	entries := e.logs.FilterMessage("client stalled: stream dropped for a waiting pull").All()
	if len(entries) != 1 {
		t.Fatalf("%d eviction log lines, want 1", len(entries))
	}
	f := entries[0].ContextMap()
	if entries[0].Level != zapcore.InfoLevel || f["upstream"] != "docker.io" || f["repository"] != "acme/app" ||
		f["digest"] != e.layer.String() {
		t.Errorf("eviction log %v %v", entries[0].Level, f)
	}
	if d, _ := f["stalled_for"].(time.Duration); d < grace {
		t.Errorf("logged stalled_for %v, under the grace", f["stalled_for"])
	}
	if b, _ := f["bytes"].(int64); b <= 0 || b >= int64(len(e.blob)) {
		t.Errorf("logged %v bytes sent, want some of the %d", f["bytes"], len(e.blob))
	}
	victim, ok := raw[f["client"].(string)]
	if !ok {
		t.Fatalf("logged client %v is not one of the stalled clients", f["client"])
	}
	// What the kernel had buffered is there to read, then the end.
	_ = victim.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, victim)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("evicted client's connection still open: %v", err)
	}
	if n >= int64(len(e.blob)) {
		t.Fatalf("the evicted client received %d bytes, the whole blob", n)
	}
	// Its handler ends quietly: the eviction is its only report, not an
	// upstream failure.
	awaitCond(t, "the evicted request to end", func() bool {
		return e.logs.FilterMessage("request").FilterField(zap.String("client", f["client"].(string))).Len() == 1
	})
	if n := e.logs.FilterMessage("blob stream failed").Len(); n != 0 {
		t.Errorf("the evicted stream was also reported as %d failed upstream streams", n)
	}
	// The other stalled client still has its stream.
	tab := e.p.streams
	tab.mu.Lock()
	defer tab.mu.Unlock()
	for s := range tab.byUpstream["docker.io"] {
		if s.client == f["client"] || s.wasEvicted() || s.conn.(*clientConn).dropped.Load() {
			t.Errorf("stream of %s still registered or dropped: evicted %v", s.client, s.wasEvicted())
		}
	}
	if n := len(tab.byUpstream["docker.io"]); n != 1 {
		t.Errorf("%d streams registered, want the other stalled client's", n)
	}
}

// TestStallEvictionOff: with a grace of 0 the same stalled clients keep
// both stream connections, and the pull fails once the upstream timeout
// passes waiting for one. It is the eviction that frees them above.
func TestStallEvictionOff(t *testing.T) {
	t.Parallel()
	e := newEvictEnv(t, 32<<20, 2, time.Second, 0)
	for range 2 {
		rawRequest(t, dialSmallWindow(t, e.addr), "/v2/acme/app/blobs/"+e.layer.String()+"?ns=docker.io")
	}
	awaitCond(t, "both clients to stall", func() bool { return e.stalled(200*time.Millisecond) == 2 })
	if code := e.pull(t); code != http.StatusServiceUnavailable {
		t.Fatalf("pull with eviction off: status %d, want 503 (no stream connection free)", code)
	}
	if v := metricNow(t, e.p, "portcullis_client_streams_evicted_total"); v != 0 {
		t.Fatalf("evicted counter %v with eviction off", v)
	}
	if n := e.stalled(0); n != 2 {
		t.Fatalf("%d stalled streams left, want both", n)
	}
}

// TestSteadyStreamNotEvicted: a client reading slowly but steadily holds
// the only stream connection of its upstream, keeping the proxy's 1 MiB
// writes to it blocked most of the time. A pull arriving meanwhile does
// not evict it, nor would any of the requests for a connection probed
// every 20 ms while it reads; the pull is served once a connection is
// free, and the reader gets the whole blob. (That a write longer than the
// grace still counts its progress is TestClientConnStalledFor's, on a fake
// clock; here the grace leaves room for a loaded scheduler.)
func TestSteadyStreamNotEvicted(t *testing.T) {
	t.Parallel()
	// A write's progress is seen every grace/4; the rest is room for the
	// race detector on a loaded machine, where a blocked write was once
	// seen stalled for 1.16 s against a grace of 1 s.
	const grace = 2 * time.Second
	// Large enough that the proxy's writes still block once the kernel's
	// send buffer (up to 4 MiB) has grown.
	e := newEvictEnv(t, 8<<20, 1, 30*time.Second, grace)
	c := dialWindow(t, e.addr, 64<<10)
	rawRequest(t, c, "/v2/acme/app/blobs/"+e.layer.String()+"?ns=docker.io")
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))

	type result struct {
		status int
		body   []byte
		err    error
	}
	got := make(chan result, 1)
	progress := make(chan struct{})
	go func() {
		// At most 3.2 MB/s: a 1 MiB write takes 330 ms or more.
		br := bufio.NewReader(&slowReader{r: c, chunk: 32 << 10, pause: 10 * time.Millisecond})
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		head := make([]byte, 1<<20)
		if _, err := io.ReadFull(resp.Body, head); err != nil {
			got <- result{err: err}
			return
		}
		close(progress)
		rest, err := io.ReadAll(resp.Body)
		got <- result{status: resp.StatusCode, body: append(head, rest...), err: err}
	}()
	recv(t, progress, "progress")
	pulled := make(chan int, 1)
	go func() { pulled <- e.pull(t) }()
	// Ask for a stream connection again and again while the reader is
	// blocking the proxy's writes: its stream is never the one to go.
	blocked := 0
	for done := false; !done; {
		select {
		case r := <-got:
			got <- r
			done = true
		case <-time.After(20 * time.Millisecond):
		}
		now := time.Now()
		for _, s := range e.streamsOf() {
			if s.conn.stalledFor(now) > 0 {
				blocked++
			}
		}
		probe := &stream{upstream: "docker.io"}
		v, d := e.p.streams.admit(probe, 1, grace, now)
		e.p.streams.remove(probe)
		if v != nil {
			t.Fatalf("a pull would evict a steady reader seen stalled for %v", d)
		}
	}
	if v := metricNow(t, e.p, "portcullis_client_streams_evicted_total"); v != 0 {
		t.Fatalf("evicted counter %v for a steady reader", v)
	}
	t.Logf("%d probes saw the proxy's write blocked", blocked)
	if blocked < 5 {
		t.Fatalf("the reader blocked the proxy's writes at %d probes only: the test proves nothing", blocked)
	}
	if code := <-pulled; code != http.StatusOK {
		t.Fatalf("pull behind a steady reader: status %d, want 200", code)
	}
	r := recv(t, got, "got")
	if r.err != nil {
		t.Fatalf("steady reader cut after %d bytes: %v", len(r.body), r.err)
	}
	if sum := sha256.Sum256(r.body); r.status != http.StatusOK || hex.EncodeToString(sum[:]) != e.layer.Hex {
		t.Fatalf("steady reader: status %d, %d bytes that are not the blob", r.status, len(r.body))
	}
}

// TestPullWaitingWhileClientsStall: a pull that arrives together with two
// clients that then stop reading, while they are still within the 1 s
// grace, waits for a stream connection and gets one once a stall passes
// the grace, instead of waiting until the upstream timeout.
func TestPullWaitingWhileClientsStall(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	e := newEvictEnv(t, 32<<20, 2, 15*time.Second, grace)
	for range 2 {
		rawRequest(t, dialSmallWindow(t, e.addr), "/v2/acme/app/blobs/"+e.layer.String()+"?ns=docker.io")
	}
	awaitCond(t, "both clients to block the proxy's writes", func() bool { return e.stalled(time.Nanosecond) == 2 })
	if n := e.stalled(grace / 2); n != 0 {
		t.Skipf("%d clients already stalled for half the grace: the pull would evict on arrival", n)
	}
	if code := e.pull(t); code != http.StatusOK {
		t.Fatalf("pull waiting while clients stall: status %d, want 200", code)
	}
	if v := metricNow(t, e.p, "portcullis_client_streams_evicted_total"); v != 1 {
		t.Fatalf("evicted counter %v, want 1", v)
	}
	entries := e.logs.FilterMessage("client stalled: stream dropped for a waiting pull").All()
	if len(entries) != 1 {
		t.Fatalf("%d eviction log lines, want 1", len(entries))
	}
	if d, _ := entries[0].ContextMap()["stalled_for"].(time.Duration); d < grace {
		t.Errorf("logged stalled_for %v, under the grace", d)
	}
}
