package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// floorCommand, as the first argument, makes the bench binary the floor
// server instead of a bench run (see serveFloor).
const floorCommand = "serve-floor"

// floorEntry is one manifest the floor answers, as the registry sent it.
type floorEntry struct {
	Path      string `json:"path"` // /v2/<repo>/manifests/<digest>
	Digest    string `json:"digest"`
	MediaType string `json:"media_type"`
	Body      []byte `json:"body"`
}

// serveFloor is the floor: a bare net/http server answering manifests by
// digest from a map in memory, with the headers Portcullis sends. It
// checks, routes and counts nothing, so its cost per request is what any
// Go HTTP server pays to answer these bytes; it runs as its own process so
// that its CPU can be read like Portcullis's.
func serveFloor(args []string) int {
	fs := flag.NewFlagSet(floorCommand, flag.ContinueOnError)
	file := fs.String("manifests", "", "JSON list of manifests to serve")
	addr := fs.String("listen", "127.0.0.1:0", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		return 1
	}
	var entries []floorEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		return 1
	}
	type answer struct {
		header http.Header
		body   []byte
	}
	byPath := make(map[string]answer, len(entries))
	for _, e := range entries {
		byPath[e.Path] = answer{body: e.Body, header: http.Header{
			"Docker-Distribution-Api-Version": {"registry/2.0"},
			"Docker-Content-Digest":           {e.Digest},
			"Etag":                            {`"` + e.Digest + `"`},
			"Content-Type":                    {e.MediaType},
			"Content-Length":                  {strconv.Itoa(len(e.Body))},
		}}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, "{}")
			return
		}
		a, ok := byPath[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		hd := w.Header()
		for k, v := range a.header {
			hd[k] = v
		}
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(a.body)
		}
	})
	// The timeouts Portcullis's registry listener has, which cost the same
	// per connection.
	return serveOn("floor", *addr, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
	})
}

// serveOn runs srv on addr until the process is stopped; what names the
// server in its errors. srv's own error log is discarded.
func serveOn(what, addr string, srv *http.Server) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, what+":", err)
		return 1
	}
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, what+":", err)
		return 1
	}
	return 0
}

// startSelf runs this bench binary with args, listening on a free
// loopback port, as a process of its own: the target name, its log under
// logName. It is ready once readyPath answers 200 from that process.
func startSelf(ctx context.Context, client *http.Client, dir, logName, name, readyPath string, args ...string) (*target, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	argv := append(append([]string{exe}, args...), "-listen", fmt.Sprintf("127.0.0.1:%d", port))
	p, err := harness.Start(teardown, dir, logName, argv...)
	if err != nil {
		return nil, err
	}
	t := &target{name: name, host: fmt.Sprintf("127.0.0.1:%d", port), proc: p}
	if err := p.WaitReady(ctx, client, t.url()+readyPath, port); err != nil {
		return nil, err
	}
	return t, nil
}

// startFloor fetches each digest's manifest from the direct registry once
// and starts the floor serving those bytes under the same paths.
func startFloor(ctx context.Context, client *http.Client, dir string, direct *target, digests []name.Digest) (*target, error) {
	entries := make([]floorEntry, 0, len(digests))
	for _, d := range digests {
		e, err := fetchManifest(ctx, client, manifestURL(direct, d))
		if err != nil {
			return nil, fmt.Errorf("floor: %w", err)
		}
		e.Path = "/v2/" + d.Context().RepositoryStr() + "/manifests/" + d.DigestStr()
		entries = append(entries, e)
	}
	b, err := json.Marshal(entries)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "floor.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return nil, err
	}
	return startSelf(ctx, client, dir, "floor", "floor (net/http, bytes in memory)", "/v2/", floorCommand, "-manifests", file)
}

func fetchManifest(ctx context.Context, client *http.Client, url string) (floorEntry, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return floorEntry{}, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return floorEntry{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return floorEntry{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return floorEntry{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return floorEntry{Digest: resp.Header.Get("Docker-Content-Digest"), MediaType: resp.Header.Get("Content-Type"), Body: body}, nil
}

// procCPUPrecise is the CPU time all threads of pid have run, from each
// thread's schedstat (nanoseconds), where /proc/<pid>/stat counts clock
// ticks of 10 ms: too coarse for tens of microseconds per request. It
// falls back to procCPU when schedstat is not available.
func procCPUPrecise(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return procCPU(pid)
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			return procCPU(pid)
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return procCPU(pid)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return procCPU(pid)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// measurePrecise is measure with procCPUPrecise.
func (t *target) measurePrecise(f func() cell) cell {
	if t.proc == nil {
		return f()
	}
	before, err := procCPUPrecise(t.proc.Pid())
	c := f()
	after, err2 := procCPUPrecise(t.proc.Pid())
	if err == nil && err2 == nil && c.requests > 0 {
		c.cpu = (after - before) / time.Duration(c.requests)
	}
	return c
}

// floorRow compares Portcullis's warm GET by digest with the floor at one
// concurrency: medians over rounds that alternate the two, so that load
// from elsewhere on the machine falls on both alike.
type floorRow struct {
	concurrency, requests, rounds int
	floor, pc                     cell // medians of rps, p50, p99 and cpu
}

func (f floorRow) cpuRatio() float64 { return ratio(float64(f.pc.cpu), float64(f.floor.cpu)) }
func (f floorRow) rpsRatio() float64 { return ratio(f.pc.rps, f.floor.rps) }

// floorMinRequests is the least number of requests per round of the floor
// comparison, -quick included.
var floorMinRequests = map[int]int{1: 3000, 16: 10000}

// floorRounds is how many times each of the floor and Portcullis is
// measured per concurrency.
const floorRounds = 5

// compareFloor measures warm GETs by digest on the floor and on
// Portcullis, alternating, at each concurrency.
func (b *bench) compareFloor(ctx context.Context, floor *target, urls func(*target) []string) error {
	for _, conc := range []int{1, 16} {
		// CPU per request is a difference of two readings; enough requests
		// make it outweigh what else the process does meanwhile.
		n := max(b.sz.getDigest[conc], floorMinRequests[conc])
		logf("warm manifest GETs against the floor, %s", clients(conc))
		var fc, pcs []cell
		for round := range floorRounds {
			for _, t := range []*target{floor, &b.pc.target} {
				p := probe{method: http.MethodGet, urls: urls(t), want: http.StatusOK}
				if round == 0 {
					runLoad(ctx, b.client, p, min(n, 500), conc) // connections and caches up
				}
				c := t.measurePrecise(func() cell { return runLoad(ctx, b.client, p, n, conc) })
				if !c.ok() {
					return fmt.Errorf("warm GET through %s: %d errors, first: %s", t.name, c.errors, c.firstErr)
				}
				if t == floor {
					fc = append(fc, c)
				} else {
					pcs = append(pcs, c)
				}
			}
		}
		b.res.floor = append(b.res.floor, floorRow{concurrency: conc, requests: n, rounds: floorRounds, floor: medianCell(fc), pc: medianCell(pcs)})
	}
	return nil
}

// medianCell takes the median of each measurement separately.
func medianCell(cs []cell) cell {
	if len(cs) == 0 {
		return cell{}
	}
	pick := func(f func(cell) float64) float64 {
		v := make([]float64, len(cs))
		for i, c := range cs {
			v[i] = f(c)
		}
		return median(v)
	}
	out := cs[0]
	out.rps = pick(func(c cell) float64 { return c.rps })
	out.p50 = time.Duration(pick(func(c cell) float64 { return float64(c.p50) }))
	out.p99 = time.Duration(pick(func(c cell) float64 { return float64(c.p99) }))
	out.cpu = time.Duration(pick(func(c cell) float64 { return float64(c.cpu) }))
	for _, c := range cs[1:] {
		out.errors += c.errors
	}
	return out
}

func (r *results) floorMarkdown(p func(string, ...any)) {
	if len(r.floor) == 0 {
		return
	}
	p("### Warm GET by digest against the floor")
	p("")
	p("The floor is a bare `net/http` server (its own process) answering the same manifest bytes from a map in memory with the same headers: what any Go server pays to answer them. Medians of %d rounds alternating floor and Portcullis; server CPU/req from each thread's `/proc/<pid>/task/*/schedstat` (nanoseconds).", r.floor[0].rounds)
	p("")
	p("| clients | requests | floor req/s | Portcullis req/s | req/s ratio | floor CPU/req | Portcullis CPU/req | CPU ratio | floor p50 | Portcullis p50 |")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, f := range r.floor {
		p("| %d | %d | %.0f | %.0f | %s | %s | %s | %s | %s | %s |", f.concurrency, f.requests, f.floor.rps, f.pc.rps, fmtRatio(f.rpsRatio()),
			harness.Duration(f.floor.cpu), harness.Duration(f.pc.cpu), fmtRatio(f.cpuRatio()), harness.Duration(f.floor.p50), harness.Duration(f.pc.p50))
	}
	p("")
}

// warmGoals are the floor's targets and HEAD by tag's against the relay
// run as its own process.
func warmGoals(r *results) []goal {
	var gs []goal
	for _, conc := range []int{1, 16} {
		var relay, pc *row
		for i, rw := range r.headTag {
			switch {
			case rw.c.concurrency != conc:
			case rw.target == relayName:
				relay = &r.headTag[i]
			case strings.HasPrefix(rw.target, "portcullis"):
				pc = &r.headTag[i]
			}
		}
		if relay == nil || pc == nil {
			continue
		}
		rt := ratio(float64(pc.c.p50), float64(relay.c.p50))
		gs = append(gs, goal{
			name:     fmt.Sprintf("warm HEAD by tag p50 vs go-relay (own process), %s", clients(conc)),
			measured: fmtRatio(rt), want: "≤ 1.05×", pass: pc.c.ok() && relay.c.ok() && rt > 0 && rt <= 1.05,
		})
	}
	for _, f := range r.floor {
		ok := f.floor.ok() && f.pc.ok()
		gs = append(gs,
			goal{name: fmt.Sprintf("warm GET by digest, %s: server CPU/req vs the floor", clients(f.concurrency)),
				measured: fmtRatio(f.cpuRatio()), want: "≤ 1.25×", pass: ok && f.cpuRatio() > 0 && f.cpuRatio() <= 1.25},
			goal{name: fmt.Sprintf("warm GET by digest, %s: req/s vs the floor", clients(f.concurrency)),
				measured: fmtRatio(f.rpsRatio()), want: "≥ 0.90×", pass: ok && f.rpsRatio() >= 0.9},
		)
	}
	return gs
}

// relayCommand, as the first argument, makes the bench binary a bare
// reverse proxy (see serveRelay).
const relayCommand = "serve-relay"

// serveRelay is the go-relay as a process of its own: httputil's
// ReverseProxy in front of the upstream, checking nothing. Run apart from
// the bench's client, it pays the same cross-process hops as Portcullis,
// so the two compare as equals. With -sha256 it is the least a relay that
// checks blobs can do: every blob body is hashed as it passes, on the
// goroutine that copies it, and cut short when its bytes do not match the
// digest in its path. Nothing else is checked, cached or counted: its
// throughput is what the obvious proxy that serves only checked bytes
// reaches, on one goroutine per pull.
func serveRelay(args []string) int {
	fs := flag.NewFlagSet(relayCommand, flag.ContinueOnError)
	upstream := fs.String("upstream", "", "upstream URL")
	addr := fs.String("listen", "127.0.0.1:0", "address to listen on")
	hashBlobs := fs.Bool("sha256", false, "hash every blob body and cut it when it does not match its digest")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	u, err := url.Parse(*upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	return serveOn("relay", *addr, &http.Server{Handler: relayHandler(u, *hashBlobs), ReadHeaderTimeout: 10 * time.Second})
}

// relayHandler is serveRelay's reverse proxy to u.
func relayHandler(u *url.URL, hashBlobs bool) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = u.Host },
		Transport: newClient().Transport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	if hashBlobs {
		rp.ModifyResponse = func(resp *http.Response) error {
			req := resp.Request
			if req.Method != http.MethodGet || resp.StatusCode != http.StatusOK || classify(req.URL.Path) != kindBlob {
				return nil
			}
			_, dg, _ := strings.Cut(req.URL.Path[strings.LastIndexByte(req.URL.Path, '/')+1:], "sha256:")
			resp.Body = &digestReader{rc: resp.Body, h: sha256.New(), want: dg, remain: resp.ContentLength}
			return nil
		}
	}
	return rp
}

// digestReader hashes what is read through it and fails, instead of
// returning it, the read that completes the announced length when the
// bytes are not the digest's: the client never has the whole of a wrong
// blob, as Portcullis's stream holds back its last chunk. ReverseProxy
// then aborts the response.
type digestReader struct {
	rc     io.ReadCloser
	h      hash.Hash
	want   string // lowercase hex
	remain int64  // bytes still to come; the length must be announced
}

func (d *digestReader) Read(p []byte) (int, error) {
	if d.remain < 0 {
		return 0, errors.New("blob without a length")
	}
	n, err := d.rc.Read(p[:min(int64(len(p)), d.remain+1)])
	d.h.Write(p[:n])
	d.remain -= int64(n)
	switch {
	case d.remain < 0:
		return 0, errors.New("blob longer than announced")
	case d.remain == 0 && hex.EncodeToString(d.h.Sum(nil)) != d.want:
		return 0, errors.New("blob does not match its digest")
	}
	return n, err
}

func (d *digestReader) Close() error { return d.rc.Close() }

// relayName and hashRelayName are the targets serveRelay runs as.
const (
	relayName     = "go-relay (own process)"
	hashRelayName = "sha256-relay (own process)"
)

// startRelay runs serveRelay in front of upstream, hashing blobs when
// hashBlobs is set.
func startRelay(ctx context.Context, client *http.Client, dir, upstream string, hashBlobs bool) (*target, error) {
	if hashBlobs {
		return startSelf(ctx, client, dir, "sha256-relay", hashRelayName, "/v2/", relayCommand, "-upstream", upstream, "-sha256")
	}
	return startSelf(ctx, client, dir, "relay", relayName, "/v2/", relayCommand, "-upstream", upstream)
}

// bytesCommand, as the first argument, makes the bench binary the herd's
// bare sender (see serveBytes).
const bytesCommand = "serve-bytes"

// serveBytes answers GET /blob with one file's bytes, read into memory at
// start: no upstream, no hashing, no cache, nothing counted. A herd pulled
// from it shows what writing the blob to every client costs this machine
// when nothing else is done; it is no strict floor, as a sender that
// paces its writes can keep the clients' reads in the CPU caches.
func serveBytes(args []string) int {
	fs := flag.NewFlagSet(bytesCommand, flag.ContinueOnError)
	file := fs.String("file", "", "the file to serve")
	addr := fs.String("listen", "127.0.0.1:0", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	body, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bytes:", err)
		return 1
	}
	return serveOn("bytes", *addr, &http.Server{Handler: bytesHandler(body), ReadHeaderTimeout: 10 * time.Second})
}

func bytesHandler(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blob" {
			return // readiness
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
	})
}

// startBytes runs serveBytes for file.
func startBytes(ctx context.Context, client *http.Client, dir, file string) (*target, error) {
	return startSelf(ctx, client, dir, "bytes", "bare sender (own process)", "/", bytesCommand, "-file", file)
}
