// Command rr is the end-to-end suite's stand-in for a Kubernetes Service
// in front of several proxy replicas: every request goes to the next
// backend in turn, so one client pull is spread over all of them, as
// containerd's parallel connections spread it behind a Service.
//
//	rr -listen 127.0.0.1:0 http://127.0.0.1:5001 http://127.0.0.1:5002 ...
//
// It prints "listening ADDR" once bound.
//
// -affinity clientip models a Service with sessionAffinity: ClientIP: the
// first request from a client address goes to the next backend in turn
// and every later one from that address to the same backend, as
// kube-proxy pins a node to one pod.
//
// With one backend it is the suite's spy between the proxies and their
// registry: -count counts the requests by method and path and serves the
// counts as JSON on GET /_rr/counts (so the suite can prove evidence was
// fetched once upstream), and -delay REGEX=DURATION holds the first
// request whose path matches REGEX for DURATION before forwarding it (so
// a verification can be made slow once, and whoever retries it is not).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// delayRule holds the first request matching re for d; later ones pass.
type delayRule struct {
	re    *regexp.Regexp
	d     time.Duration
	fired atomic.Bool
}

type delays []*delayRule

func (ds *delays) String() string { return fmt.Sprint(len(*ds), " rules") }

func (ds *delays) Set(s string) error {
	i := strings.LastIndex(s, "=")
	if i < 0 {
		return fmt.Errorf("%q: want REGEX=DURATION", s)
	}
	re, err := regexp.Compile(s[:i])
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(s[i+1:])
	if err != nil || d <= 0 {
		return fmt.Errorf("%q: want a positive duration after =", s)
	}
	*ds = append(*ds, &delayRule{re: re, d: d})
	return nil
}

// counter counts requests by "METHOD PATH".
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(r *http.Request) {
	c.mu.Lock()
	c.n[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
}

func (c *counter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	b, err := json.Marshal(c.n)
	c.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// sticky pins each client address to the backend it was first given.
type sticky struct {
	mu   sync.Mutex
	next int
	by   map[string]int
}

func (s *sticky) pick(r *http.Request, n int) int {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.by[host]
	if !ok {
		i = s.next % n
		s.next++
		s.by[host] = i
	}
	return i
}

// front is rr's handler.
type front struct {
	backends []http.Handler
	pick     func(*http.Request) int
	counts   *counter // nil without -count
	delays   delays
	mux      *http.ServeMux
}

// newFront sends requests to backends, each to the next one in turn
// (affinity "none") or each client address to the backend it was first
// given ("clientip").
func newFront(backends []http.Handler, affinity string, count bool, ds delays) (*front, error) {
	if len(backends) == 0 {
		return nil, fmt.Errorf("no backend")
	}
	f := &front{backends: backends, delays: ds, mux: http.NewServeMux()}
	switch affinity {
	case "none":
		var next atomic.Uint64
		f.pick = func(*http.Request) int { return int((next.Add(1) - 1) % uint64(len(backends))) }
	case "clientip":
		s := &sticky{by: map[string]int{}}
		f.pick = func(r *http.Request) int { return s.pick(r, len(backends)) }
	default:
		return nil, fmt.Errorf("affinity %q: want none or clientip", affinity)
	}
	if count {
		f.counts = &counter{n: map[string]int{}}
		f.mux.Handle("GET /_rr/counts", f.counts)
	}
	f.mux.HandleFunc("/", f.forward)
	return f, nil
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

func (f *front) forward(w http.ResponseWriter, r *http.Request) {
	if f.counts != nil {
		f.counts.add(r)
	}
	for _, d := range f.delays {
		if d.re.MatchString(r.URL.Path) && d.fired.CompareAndSwap(false, true) {
			log.Printf("rr: holding %s %s for %v", r.Method, r.URL.Path, d.d)
			select {
			case <-time.After(d.d):
			case <-r.Context().Done():
				return
			}
		}
	}
	f.backends[f.pick(r)].ServeHTTP(w, r)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	affinity := flag.String("affinity", "none", "none: every request to the next backend; clientip: each client address stays on the backend it was first sent to")
	count := flag.Bool("count", false, "count requests by method and path; GET /_rr/counts serves the counts as JSON")
	var ds delays
	flag.Var(&ds, "delay", "REGEX=DURATION: hold the first request whose path matches REGEX for DURATION (repeatable; each rule fires once)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rr [-listen ADDR] [-affinity none|clientip] [-count] [-delay REGEX=DURATION]... BACKEND-URL...")
		os.Exit(2)
	}
	var backends []http.Handler
	for _, a := range flag.Args() {
		u, err := url.Parse(a)
		if err != nil || u.Scheme == "" || u.Host == "" {
			log.Fatalf("rr: backend %q is not an absolute URL", a)
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		// Streams blobs as they arrive rather than buffering them.
		rp.FlushInterval = -1
		// Many clients at once (a herd) must not queue behind two idle
		// connections per backend.
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: 30 * time.Second}
		backends = append(backends, rp)
	}
	f, err := newFront(backends, *affinity, *count, ds)
	if err != nil {
		log.Fatalf("rr: %v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("rr: %v", err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, f))
}
