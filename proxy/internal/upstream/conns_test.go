package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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
