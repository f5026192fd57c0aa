package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"
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
