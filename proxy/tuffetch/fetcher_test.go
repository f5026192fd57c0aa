package tuffetch

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func TestDownloadFileLimits(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("elsewhere")) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			_, _ = w.Write([]byte("0123456789"))
		case "/chunked": // no Content-Length: the limit applies while reading
			w.(http.Flusher).Flush()
			_, _ = w.Write([]byte(strings.Repeat("x", 100)))
		case "/slow":
			<-block
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/away":
			http.Redirect(w, r, other.URL+"/x", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	defer close(block)
	f := New(200*time.Millisecond, "test", 0, nil)

	if b, err := f.DownloadFile(srv.URL+"/ok", 10, 0); err != nil || string(b) != "0123456789" {
		t.Fatalf("ok: %q %v", b, err)
	}
	var lm *metadata.ErrDownloadLengthMismatch
	if _, err := f.DownloadFile(srv.URL+"/ok", 9, 0); !errors.As(err, &lm) {
		t.Fatalf("announced too long: %v", err)
	}
	if _, err := f.DownloadFile(srv.URL+"/chunked", 50, 0); !errors.As(err, &lm) {
		t.Fatalf("unannounced too long: %v", err)
	}
	var he *metadata.ErrDownloadHTTP
	if _, err := f.DownloadFile(srv.URL+"/missing", 10, 0); !errors.As(err, &he) || he.StatusCode != http.StatusNotFound {
		t.Fatalf("404 must stay typed for go-tuf's root walk: %v", err)
	}
	start := time.Now()
	if _, err := f.DownloadFile(srv.URL+"/slow", 10, 0); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("slow download: %v after %s", err, time.Since(start))
	}
	if b, err := f.DownloadFile(srv.URL+"/moved", 10, 0); err != nil || string(b) != "0123456789" {
		t.Fatalf("same-host redirect: %q %v", b, err)
	}
	if _, err := f.DownloadFile(srv.URL+"/away", 10, 0); err == nil || !strings.Contains(err.Error(), "another host") {
		t.Fatalf("redirect to another host: %v", err)
	}
	if _, err := f.DownloadFile("file:///etc/passwd", 10, 0); err == nil {
		t.Fatal("non-HTTP URL accepted")
	}
}

// TestDownloadFileHeaderBound: an answer's headers are read up to the
// bound and no further; net/http alone would read 10 MiB of them.
func TestDownloadFileHeaderBound(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := map[string]int{"/small": 16 << 10, "/large": 128 << 10}[r.URL.Path]
		// Headers of 4 KiB each, as a hostile mirror might pad them.
		for i := range n / (4 << 10) {
			w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 4<<10))
		}
		_, _ = w.Write([]byte("0123456789"))
	}))
	defer srv.Close()
	def := New(5*time.Second, "test", 0, nil)
	if b, err := def.DownloadFile(srv.URL+"/small", 10, 0); err != nil || string(b) != "0123456789" {
		t.Fatalf("16 KiB of headers under the default bound: %q %v", b, err)
	}
	if _, err := def.DownloadFile(srv.URL+"/large", 10, 0); err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("128 KiB of headers under the default bound: %v", err)
	}
	wide := New(5*time.Second, "test", 256<<10, nil)
	if b, err := wide.DownloadFile(srv.URL+"/large", 10, 0); err != nil || string(b) != "0123456789" {
		t.Fatalf("128 KiB of headers under a bound of 256 KiB: %q %v", b, err)
	}
	narrow := New(5*time.Second, "test", 8<<10, nil)
	if _, err := narrow.DownloadFile(srv.URL+"/small", 10, 0); err == nil {
		t.Fatal("16 KiB of headers under a bound of 8 KiB were read")
	}
}
