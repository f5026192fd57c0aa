// Command rr is the end-to-end suite's stand-in for a Kubernetes Service
// in front of several proxy replicas: every request goes to the next
// backend in turn, so one client pull is spread over all of them, as
// containerd's parallel connections spread it behind a Service.
//
//	rr -listen 127.0.0.1:0 http://127.0.0.1:5001 http://127.0.0.1:5002 ...
//
// It prints "listening ADDR" once bound.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rr [-listen ADDR] BACKEND-URL...")
		os.Exit(2)
	}
	var backends []*httputil.ReverseProxy
	for _, a := range flag.Args() {
		u, err := url.Parse(a)
		if err != nil || u.Scheme == "" || u.Host == "" {
			log.Fatalf("rr: backend %q is not an absolute URL", a)
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		// Streams blobs as they arrive rather than buffering them.
		rp.FlushInterval = -1
		backends = append(backends, rp)
	}
	var next atomic.Uint64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backends[(next.Add(1)-1)%uint64(len(backends))].ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("rr: %v", err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, handler))
}
