package hostile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Tarpit is an upstream that answers the registry ping and holds every
// other request open until its caller gives up or the tarpit is closed:
// the worst case of a slow or hostile registry, where only the caller's
// own bounds release the work it started.
type Tarpit struct {
	URL  string // http://127.0.0.1:port
	Host string

	srv     *http.Server
	release chan struct{}
	once    sync.Once
	held    atomic.Int64
	peak    atomic.Int64
	total   atomic.Int64
}

// StartTarpit listens on a free loopback port.
func StartTarpit() (*Tarpit, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &Tarpit{Host: ln.Addr().String(), release: make(chan struct{})}
	t.URL = "http://" + t.Host
	quiet := log.New(io.Discard, "", 0)
	t.srv = &http.Server{Handler: http.HandlerFunc(t.serve), ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	go func() { _ = t.srv.Serve(ln) }()
	return t, nil
}

func (t *Tarpit) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	t.total.Add(1)
	n := t.held.Add(1)
	defer t.held.Add(-1)
	for {
		p := t.peak.Load()
		if n <= p || t.peak.CompareAndSwap(p, n) {
			break
		}
	}
	select {
	case <-r.Context().Done():
	case <-t.release:
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

// Held is the number of requests the tarpit holds open right now: upstream
// work its callers have not abandoned.
func (t *Tarpit) Held() int64 { return t.held.Load() }

// Peak is the largest Held seen.
func (t *Tarpit) Peak() int64 { return t.peak.Load() }

// Total counts the requests held since the start.
func (t *Tarpit) Total() int64 { return t.total.Load() }

// Close answers every held request and stops listening.
func (t *Tarpit) Close() {
	t.once.Do(func() {
		close(t.release)
		_ = t.srv.Close()
	})
}

// FloodResult counts what happened to a flood's requests.
type FloodResult struct {
	Requests   int
	Abandoned  int            // still unanswered when the client gave up
	Answered   map[int]int    // by status, answered in time
	ConnErrors map[string]int // by kind: refused, reset, eof, other
	Elapsed    time.Duration
}

// Summary is the answered statuses and connection errors in one line.
func (f FloodResult) Summary() string {
	var parts []string
	codes := make([]int, 0, len(f.Answered))
	for c := range f.Answered {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		parts = append(parts, strconv.Itoa(c)+": "+strconv.Itoa(f.Answered[c]))
	}
	kinds := make([]string, 0, len(f.ConnErrors))
	for k := range f.ConnErrors {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		parts = append(parts, k+": "+strconv.Itoa(f.ConnErrors[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// Flood sends n GETs of random digests in repo to baseURL (query, if not
// empty, is appended, e.g. "?ns=tarpit") from conc workers, each on a new
// connection that is closed once abandonAfter has passed without an
// answer: a client that gives up and goes away.
func Flood(ctx context.Context, baseURL, repo, query string, n, conc int, abandonAfter time.Duration) FloodResult {
	client := &http.Client{Transport: &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableKeepAlives: true,
	}}
	defer client.CloseIdleConnections()
	res := FloodResult{Requests: n, Answered: map[int]int{}, ConnErrors: map[string]int{}}
	var (
		mu   sync.Mutex
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for int(next.Add(1)) <= n && ctx.Err() == nil {
				status, kind := floodOne(ctx, client, baseURL+"/v2/"+repo+"/manifests/"+RandomDigest()+query, abandonAfter)
				mu.Lock()
				switch {
				case kind == "abandoned":
					res.Abandoned++
				case kind != "":
					res.ConnErrors[kind]++
				default:
					res.Answered[status]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

func floodOne(ctx context.Context, client *http.Client, url string, abandonAfter time.Duration) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, abandonAfter)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "other"
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, "abandoned"
		}
		return 0, ConnErrorKind(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, ""
}

// ConnErrorKind names a client-side failure to get an answer.
func ConnErrorKind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

// RandomDigest is a sha256 digest nobody has pushed.
func RandomDigest() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "sha256:" + hex.EncodeToString(b[:])
}
