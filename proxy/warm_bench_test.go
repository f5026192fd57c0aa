package proxy

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkWarmManifestServe measures a warm GET by digest over loopback
// through Serve (client listener, deadlines, net/http) next to the floor:
// a bare net/http server answering the same bytes with the same headers
// from memory. Both run in this process with the same client, so the
// difference per op is what the proxy adds to an answer; compare them at
// -cpu 1 and 2 and with parallelism.
func BenchmarkWarmManifestServe(b *testing.B) {
	reg := newRegistry(b)
	img := reg.pushImage(b, "acme/app", "v1")
	p, s := newTestProxy(b, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
	path := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"
	if w := do(p, http.MethodGet, path); w.Code != http.StatusOK {
		b.Fatalf("cold GET = %d", w.Code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, p, ServeConfig{Addr: "127.0.0.1:0", Ready: func(addr, _ string) { ready <- addr }, Grace: time.Second})
	}()
	var proxyAddr string
	select {
	case proxyAddr = <-ready:
	case err := <-done:
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); <-done })

	floorAddr := startFloorServer(b, img.mt, img.digest.String(), img.raw)
	for _, tc := range []struct{ name, url string }{
		{"floor", "http://" + floorAddr + path},
		{"proxy", "http://" + proxyAddr + path},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			before := s.count()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(tc.url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("GET = %d", resp.StatusCode)
						return
					}
				}
			})
			if n := s.count() - before; n != 0 {
				b.Fatalf("%d upstream requests on the warm path", n)
			}
		})
	}
}

// startFloorServer answers one manifest from memory with the headers the
// proxy sends, and nothing else.
func startFloorServer(b *testing.B, mt, digest string, body []byte) string {
	b.Helper()
	hdr := http.Header{
		"Docker-Distribution-Api-Version": {"registry/2.0"},
		"Docker-Content-Digest":           {digest},
		"Etag":                            {`"` + digest + `"`},
		"Content-Type":                    {mt},
		"Content-Length":                  {strconv.Itoa(len(body))},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			for k, v := range hdr {
				h[k] = v
			}
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(ln)
	}()
	b.Cleanup(func() { _ = srv.Close(); wg.Wait() })
	return ln.Addr().String()
}
