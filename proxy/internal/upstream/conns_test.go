package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
)

func TestMaxConnsDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set, want int
	}{
		{0, DefaultMaxConns},
		{3, 3},
	} {
		c := newTestClient(t, Config{URL: "https://r.example", MaxConns: tc.set})
		p := c.bare.(*schemeGuard).inner.(*pools)
		for _, tr := range []*http.Transport{p.verify, p.stream} {
			if tr.MaxConnsPerHost != tc.want || tr.MaxIdleConnsPerHost > tc.want {
				t.Errorf("MaxConns %d: transport allows %d connections, keeps %d idle per host", tc.set, tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost)
			}
		}
		if p.verify == p.stream {
			t.Error("client streams and verification share one pool")
		}
	}
	if _, err := New(Config{Name: "x", URL: "https://r.example", MaxConns: -1}); err == nil {
		t.Error("negative MaxConns accepted")
	}
}

// With every connection busy streaming a blob, a further request waits
// for one and, when none frees up in time, fails with ErrConnLimit
// instead of opening another connection.
func TestMaxConnsPerHost(t *testing.T) {
	t.Parallel()
	const maxConns = 2
	var conns atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			return
		case strings.Contains(r.URL.Path, "/blobs/"):
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("part"))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() { close(release); srv.Close() })

	c := newTestClient(t, Config{URL: srv.URL, Insecure: true, MaxConns: maxConns, Timeout: 300 * time.Millisecond})
	d := sha256Hash([]byte("x"))
	for range maxConns {
		resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, 1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if _, err := io.ReadFull(resp.Body, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, 1000, nil)
	if !errors.Is(err, ErrConnLimit) {
		t.Fatalf("err = %v, want ErrConnLimit", err)
	}
	if !IsTransient(err) {
		t.Error("connection limit not reported as transient")
	}
	if n := conns.Load(); n != maxConns {
		t.Errorf("upstream saw %d connections, want %d", n, maxConns)
	}
	// Streams that clients stopped reading hold only the stream pool:
	// verification still reaches the upstream, on a pool of its own.
	if _, err := c.GetManifest(context.Background(), "app", "v1", nil); !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("manifest while every stream connection is busy: %v, want the upstream's 404", err)
	}
	if n := conns.Load(); n != maxConns+1 {
		t.Errorf("upstream saw %d connections, want %d", n, maxConns+1)
	}
}

func TestMaxHeaderBytesDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set, want int64
	}{
		{0, DefaultMaxHeaderBytes},
		{8 << 10, 8 << 10},
	} {
		c := newTestClient(t, Config{URL: "https://r.example", MaxHeaderBytes: tc.set})
		p := c.bare.(*schemeGuard).inner.(*pools)
		for _, tr := range []*http.Transport{p.verify, p.stream} {
			if tr.MaxResponseHeaderBytes != tc.want {
				t.Errorf("MaxHeaderBytes %d: transport allows %d bytes of headers, want %d", tc.set, tr.MaxResponseHeaderBytes, tc.want)
			}
		}
	}
	if _, err := New(Config{Name: "x", URL: "https://r.example", MaxHeaderBytes: -1}); err == nil {
		t.Error("negative MaxHeaderBytes accepted")
	}
}

// An upstream (or a storage host it redirects to) that sends more header
// bytes than the bound is dropped unread, over HTTP/1.1 and HTTP/2, with
// an error that says so; headers within the bound are read as usual.
func TestMaxHeaderBytes(t *testing.T) {
	t.Parallel()
	const limit = 16 << 10
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) {
			t.Parallel()
			var protos sync.Map
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				protos.Store(r.Proto, true)
				if r.URL.Path == "/v2/" {
					return
				}
				// Several fields, each well under any per-field limit.
				n := limit / 2 / 1024
				if strings.HasSuffix(r.URL.Path, "/big") {
					n = 2 * limit / 1024
				}
				for i := range n {
					w.Header().Set("X-Pad-"+strconv.Itoa(i), strings.Repeat("p", 1000))
				}
				http.NotFound(w, r)
			}))
			srv.EnableHTTP2 = h2
			if h2 {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true, MaxHeaderBytes: limit})
			if _, err := c.GetManifest(context.Background(), "app", "small", nil); !errors.Is(err, verify.ErrNotFound) {
				t.Fatalf("headers within the bound: %v, want the upstream's 404", err)
			}
			_, err := c.GetManifest(context.Background(), "app", "big", nil)
			switch {
			case errors.Is(err, ErrHeadersTooLarge) && strings.Contains(err.Error(), strconv.Itoa(limit)):
			case h2 && err != nil && strings.Contains(err.Error(), "PROTOCOL_ERROR"):
				// net/http's HTTP/2 client drops the connection, without
				// saying why, when the headers are far past the bound.
			default:
				t.Fatalf("headers past the bound: %v, want ErrHeadersTooLarge naming the bound", err)
			}
			want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
			if _, ok := protos.Load(want); !ok {
				t.Errorf("no request over %s reached the upstream", want)
			}
		})
	}
}
