package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
)

// Request kinds the spy distinguishes. Evidence kinds are the ones a
// verification reads; the herd target is that each location of each kind is
// read at most once however many clients ask.
const (
	kindPing      = "ping /v2/"
	kindTag       = "manifest by tag"
	kindDigest    = "manifest by digest"
	kindSig       = "cosign .sig tag"
	kindAtt       = "cosign .att tag"
	kindFallback  = "sha256-… fallback tag"
	kindReferrers = "referrers"
	kindBlob      = "blob"
	kindOther     = "other"
)

var evidenceKinds = map[string]bool{kindSig: true, kindAtt: true, kindFallback: true, kindReferrers: true, kindBlob: true}

var (
	reManifest  = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	reReferrers = regexp.MustCompile(`^/v2/(.+)/referrers/([^/]+)$`)
	reBlob      = regexp.MustCompile(`^/v2/(.+)/blobs/([^/]+)$`)
	reSigTag    = regexp.MustCompile(`^sha256-[0-9a-f]{64}\.(sig|att)$`)
	reFallback  = regexp.MustCompile(`^sha256-[0-9a-f]{64}$`)
)

func classify(path string) string {
	if path == "/v2/" || path == "/v2" {
		return kindPing
	}
	if m := reManifest.FindStringSubmatch(path); m != nil {
		ref := m[2]
		switch {
		case strings.HasPrefix(ref, "sha256:"):
			return kindDigest
		case reSigTag.MatchString(ref) && strings.HasSuffix(ref, ".sig"):
			return kindSig
		case reSigTag.MatchString(ref):
			return kindAtt
		case reFallback.MatchString(ref):
			return kindFallback
		default:
			return kindTag
		}
	}
	if reReferrers.MatchString(path) {
		return kindReferrers
	}
	if reBlob.MatchString(path) {
		return kindBlob
	}
	return kindOther
}

// spy is a reverse proxy in front of the direct registry that counts every
// request Portcullis makes, per kind and per (method, path).
type spy struct {
	mu     sync.Mutex
	byKind map[string]int
	byLoc  map[location]int
	srv    *http.Server
	host   string
}

func startSpy(upstream string) (*spy, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = u.Host },
		Transport: newClient().Transport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	s := &spy{host: ln.Addr().String()}
	s.reset()
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			k := classify(r.URL.Path)
			s.mu.Lock()
			s.byKind[r.Method+" "+k]++
			s.byLoc[location{r.Method, k, r.URL.Path}]++
			s.mu.Unlock()
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer teardown.Guard()
		_ = s.srv.Serve(ln)
	}()
	teardown.Add(func() { _ = s.srv.Close() })
	return s, nil
}

func (s *spy) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byKind, s.byLoc = map[string]int{}, map[location]int{}
}

// herdResult is what a thundering herd on one digest cost upstream.
type herdResult struct {
	clients       int
	served        int
	firstErr      string
	verifications float64
	upstream      []kindCount // requests by method and kind
	maxPerLoc     int         // most requests to one evidence location
	maxLoc        string
	repeated      []string // any location requested more than once
	// Upstream requests caused by one HEAD by tag once the digest is
	// verified, by method and kind.
	perHeadTag []kindCount
	headTagN   int
}

type location struct{ method, kind, path string }

type kindCount struct {
	kind  string
	count int
}

func (h herdResult) pass() bool {
	return h.served == h.clients && h.verifications == 1 && h.maxPerLoc <= 1
}

// runHerd fires clients simultaneous GETs for one digest that Portcullis has
// never seen and reports what reached the upstream.
func runHerd(ctx context.Context, client *http.Client, pc *portcullis, s *spy, manifestURL string, clients int) (herdResult, error) {
	s.reset()
	before, err := hostile.ScrapeMetric(ctx, client, pc.metricsURL(), "portcullis_verifications_total")
	if err != nil {
		return herdResult{}, err
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		served   int
		firstErr string
		gate     = make(chan struct{})
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			<-gate
			err := do(ctx, client, http.MethodGet, manifestURL, http.StatusOK)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				served++
			} else if firstErr == "" {
				firstErr = err.Error()
			}
		}()
	}
	close(gate)
	wg.Wait()
	after, err := hostile.ScrapeMetric(ctx, client, pc.metricsURL(), "portcullis_verifications_total")
	if err != nil {
		return herdResult{}, err
	}
	r := herdResult{clients: clients, served: served, firstErr: firstErr, verifications: after - before}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, n := range s.byKind {
		r.upstream = append(r.upstream, kindCount{k, n})
	}
	sort.Slice(r.upstream, func(i, j int) bool { return r.upstream[i].kind < r.upstream[j].kind })
	for loc, n := range s.byLoc {
		name := loc.method + " " + loc.path
		if n > 1 {
			r.repeated = append(r.repeated, fmt.Sprintf("%s ×%d", name, n))
		}
		if evidenceKinds[loc.kind] && (n > r.maxPerLoc || (n == r.maxPerLoc && name < r.maxLoc)) {
			r.maxPerLoc, r.maxLoc = n, name
		}
	}
	sort.Strings(r.repeated)
	if r.maxPerLoc == 0 {
		return r, fmt.Errorf("herd: the upstream saw no evidence request at all (%v)", r.upstream)
	}
	return r, nil
}

// upstreamPerRequest sends n identical requests one after another and
// returns the upstream requests they caused, by method and kind.
func upstreamPerRequest(ctx context.Context, client *http.Client, s *spy, method, url string, n int) ([]kindCount, error) {
	s.reset()
	for range n {
		if err := do(ctx, client, method, url, http.StatusOK); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []kindCount
	for k, c := range s.byKind {
		out = append(out, kindCount{k, c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].kind < out[j].kind })
	return out, nil
}
