package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// metricNow reads a counter or gauge without labels from p's registry.
func metricNow(t testing.TB, p *Proxy, name string) float64 {
	t.Helper()
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// awaitCond polls cond until it holds, failing the test after a generous
// deadline: the bound is for a broken build, not a measurement.
func awaitCond(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startServe runs Serve for p on a loopback port until the test ends and
// returns the registry address.
func startServe(t testing.TB, p *Proxy, sc ServeConfig) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	sc.Addr = "127.0.0.1:0"
	sc.Grace = time.Second
	sc.Ready = func(addr, _ string) { ready <- addr }
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, p, sc) }()
	t.Cleanup(func() {
		cancel()
		<-errc
	})
	select {
	case addr := <-ready:
		return addr
	case err := <-errc:
		errc <- err // for the cleanup, which waits for Serve to return
		t.Fatalf("Serve: %v", err)
	}
	return ""
}

// rawRequest sends one request line plus headers on c.
func rawRequest(t testing.TB, c net.Conn, target string, headers ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: proxy\r\n", target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
}

// TestClientConnIdleDeadline drives the connection wrapper against an
// unbuffered pipe on a fake clock: a client that takes nothing for the
// idle timeout is cut and counted, one that takes a little at a time is
// served a large write to the end however long it takes.
func TestClientConnIdleDeadline(t *testing.T) {
	t.Parallel()
	const idle = time.Minute
	newConn := func(t *testing.T) (*clientConn, net.Conn, *metrics) { return pipeConn(t, idle) }
	payload := make([]byte, 64<<10)

	t.Run("stalled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, client, m := newConn(t)
			defer client.Close()
			start := time.Now()
			n, err := c.Write(payload)
			if !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
				t.Fatalf("Write to a client that reads nothing = %d, %v", n, err)
			}
			if d := time.Since(start); d != idle {
				t.Errorf("cut after %v, want %v", d, idle)
			}
			if v := counterOf(m.clientStalled); v != 1 {
				t.Errorf("stalled counter %v, want 1", v)
			}
		})
	})

	t.Run("stalls midway", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, client, m := newConn(t)
			defer client.Close()
			go func() { _, _ = io.ReadFull(client, make([]byte, 10<<10)) }()
			n, err := c.Write(payload)
			if !errors.Is(err, os.ErrDeadlineExceeded) || n != 10<<10 {
				t.Fatalf("Write = %d, %v; want the 10 KiB taken, then the deadline", n, err)
			}
			if v := counterOf(m.clientStalled); v != 1 {
				t.Errorf("stalled counter %v, want 1", v)
			}
		})
	})

	t.Run("slow reader", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, client, m := newConn(t)
			defer client.Close()
			done := make(chan struct{})
			defer close(done)
			go func() {
				// 1 KiB every 40 s: the 64 KiB write takes 42 minutes.
				buf := make([]byte, 1<<10)
				for range len(payload) / len(buf) {
					select {
					case <-done:
						return
					case <-time.After(40 * time.Second):
					}
					if _, err := io.ReadFull(client, buf); err != nil {
						return
					}
				}
			}()
			n, err := c.Write(payload)
			if err != nil || n != len(payload) {
				t.Fatalf("Write to a slow but steady client = %d, %v", n, err)
			}
			if v := counterOf(m.clientStalled); v != 0 {
				t.Errorf("stalled counter %v, want 0", v)
			}
		})
	})
}

// A write keeps a deadline set by an earlier one while it ends no later
// than its own and at least halfway there, and a write that a kept
// deadline interrupts is still given its whole idle timeout.
func TestClientConnKeepsWriteDeadline(t *testing.T) {
	t.Parallel()
	const idle = time.Minute
	synctest.Test(t, func(t *testing.T) {
		c, client, _ := pipeConn(t, idle)
		defer client.Close()
		small := make([]byte, 512)
		write := func() {
			t.Helper()
			go func() { _, _ = io.ReadFull(client, make([]byte, len(small))) }()
			if n, err := c.Write(small); err != nil || n != len(small) {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		write()
		first := c.writeDeadline.Load()
		if want := time.Now().Add(idle).UnixNano(); first != want {
			t.Fatalf("deadline %d, want %d", first, want)
		}
		time.Sleep(idle/2 - time.Second)
		write()
		if c.writeDeadline.Load() != first {
			t.Fatal("a deadline still more than halfway away was set again")
		}
		// Someone (net/http) clears it: the next write sets its own.
		if err := c.SetWriteDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		write()
		if got, want := c.writeDeadline.Load(), time.Now().Add(idle).UnixNano(); got != want {
			t.Fatalf("after a clear, deadline %d, want %d", got, want)
		}
		second := c.writeDeadline.Load()
		time.Sleep(idle/2 + time.Second)
		write()
		if c.writeDeadline.Load() == second {
			t.Fatal("a deadline less than halfway away was kept")
		}

		// Kept, then a client that takes nothing: cut after the whole
		// idle timeout from the write's start, not at the kept deadline.
		time.Sleep(time.Second)
		start := time.Now()
		n, err := c.Write(make([]byte, 64<<10))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
			t.Fatalf("Write to a client that reads nothing = %d, %v", n, err)
		}
		if d := time.Since(start); d != idle {
			t.Errorf("cut after %v, want %v", d, idle)
		}
	})
}

// pipeConn is a clientConn under a listener with one slot and the idle
// timeout idle, over an in-memory pipe whose other end is client.
func pipeConn(t *testing.T, idle time.Duration) (c *clientConn, client net.Conn, m *metrics) {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	server, client := net.Pipe()
	l := newClientListener(nil, 1, idle, m, zap.NewNop())
	l.slots <- struct{}{}
	return &clientConn{Conn: server, l: l}, client, m
}

func counterOf(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// TestServeConnectionCap fills the registry listener's connection cap: the
// next client is not served until a connection closes, the wait is
// counted, and the open connections are shown in the gauge.
func TestServeConnectionCap(t *testing.T) {
	t.Parallel()
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	addr := startServe(t, p, ServeConfig{MaxConns: 2})

	get := func(c net.Conn) *http.Response {
		t.Helper()
		rawRequest(t, c, "/v2/")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if resp := get(c); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v2/: %d", resp.StatusCode)
		}
		held = append(held, c)
	}
	if v := metricNow(t, p, "portcullis_client_connections"); v != 2 {
		t.Errorf("client connections gauge %v, want 2", v)
	}

	third, err := net.Dial("tcp", addr) // completes in the kernel's backlog
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	rawRequest(t, third, "/v2/")
	awaitCond(t, "the listener to wait for a free slot", func() bool {
		return metricNow(t, p, "portcullis_client_connections_limited_total") >= 1
	})
	_ = third.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := third.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection past the cap was served: %d bytes, %v", n, err)
	}

	held[0].Close()
	_ = third.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(third), nil)
	if err != nil {
		t.Fatalf("the waiting connection was not served once a slot freed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ after the wait: %d", resp.StatusCode)
	}
	awaitCond(t, "the gauge to count the closed connection out", func() bool {
		return metricNow(t, p, "portcullis_client_connections") == 2
	})
}

// TestServeHeaderLimits sends request lines and headers past the header
// limit: net/http answers 431 before the proxy reads them, a 100 KiB URL
// included, and the configured limit is the one applied.
func TestServeHeaderLimits(t *testing.T) {
	t.Parallel()
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	defAddr := startServe(t, p, ServeConfig{})
	p2, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	smallAddr := startServe(t, p2, ServeConfig{MaxHeaderBytes: 8 << 10})

	for _, tc := range []struct {
		name    string
		addr    string
		target  string
		headers []string
		status  int
	}{
		{"100 KiB URL", defAddr, "/v2/acme/app/manifests/latest?ns=" + strings.Repeat("a", 100<<10), nil, http.StatusRequestHeaderFieldsTooLarge},
		{"100 KiB header", defAddr, "/v2/", []string{"X-Bomb: " + strings.Repeat("b", 100<<10)}, http.StatusRequestHeaderFieldsTooLarge},
		{"many headers", defAddr, "/v2/", manyHeaders(10000), http.StatusRequestHeaderFieldsTooLarge},
		{"4 KiB header", defAddr, "/v2/", []string{"X-Fine: " + strings.Repeat("c", 4<<10)}, http.StatusOK},
		{"16 KiB header, 8 KiB limit", smallAddr, "/v2/", []string{"X-Bomb: " + strings.Repeat("b", 16<<10)}, http.StatusRequestHeaderFieldsTooLarge},
		{"16 KiB URL, 8 KiB limit", smallAddr, "/v2/?x=" + strings.Repeat("u", 16<<10), nil, http.StatusRequestHeaderFieldsTooLarge},
		{"4 KiB header, 8 KiB limit", smallAddr, "/v2/", []string{"X-Fine: " + strings.Repeat("c", 4<<10)}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			// The server may answer and close before it has read all of
			// a bomb, so a failed write is expected; the answer is what
			// counts.
			go rawRequestIgnoringErrors(c, tc.target, tc.headers)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}

func rawRequestIgnoringErrors(c net.Conn, target string, headers []string) {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: proxy\r\n", target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	_, _ = io.WriteString(c, b.String())
}

func manyHeaders(n int) []string {
	h := make([]string, n)
	for i := range h {
		h[i] = fmt.Sprintf("X-H%d: v", i)
	}
	return h
}
