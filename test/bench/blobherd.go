package main

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// blobHerdEnv tunes the blobherd phase: "mib=1024,clients=100,mibps=60".
// mibps throttles each upstream blob response, standing in for a remote
// registry; 0 is loopback speed. The targets (one upstream fetch, the last
// client within 1.5× a single pull, RSS growth under 64 MiB) are met only
// where fanning the blob out to every client is cheaper than fetching it,
// which on loopback with 2 cores needs the throttle.
const blobHerdEnv = "PORTCULLIS_BENCH_BLOBHERD"

type blobHerdParams struct {
	mib, clients, mibps int64
}

func blobHerdParamsFrom(sz sizes) (blobHerdParams, error) {
	p := blobHerdParams{mib: 1024, clients: 100, mibps: 60}
	if sz.hugeMiB == 0 { // quick
		p.mib = 256
	}
	for _, kv := range strings.Split(os.Getenv(blobHerdEnv), ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return p, fmt.Errorf("%s: bad value in %q", blobHerdEnv, kv)
		}
		switch strings.TrimSpace(k) {
		case "mib":
			p.mib = n
		case "clients":
			p.clients = n
		case "mibps":
			p.mibps = n
		default:
			return p, fmt.Errorf("%s: unknown key %q (mib, clients, mibps)", blobHerdEnv, k)
		}
	}
	if p.mib < 1 || p.clients < 1 {
		return p, fmt.Errorf("%s: mib and clients must be positive", blobHerdEnv)
	}
	return p, nil
}

// blobHerdRun is one measured pull of the blob by n clients at once.
type blobHerdRun struct {
	mode      string
	clients   int
	ok        int
	firstErr  string
	upstream  int64 // upstream GETs of the blob
	last      time.Duration
	rssGrowth int64
	joins     float64
	cacheHits float64
	afterWarm int64 // upstream GETs of a pull after the herd (cache: 0)
	warmPull  time.Duration
	// proxyCPU and clientCPU are what the herd cost Portcullis and the
	// bench process (the clients, and the throttled upstream in front of
	// the registry), from /proc/<pid>/stat.
	proxyCPU, clientCPU time.Duration
	// warmHerd is the last client of the same herd once the blob is in
	// the cache (cache mode only).
	warmHerd   time.Duration
	targetsMet bool
	cacheStats []string
}

// blobHerd measures a herd of clients pulling one large blob through a
// cold proxy, without the blob cache and with it, against one pull alone.
func (b *bench) blobHerd(ctx context.Context) error {
	p, err := blobHerdParamsFrom(b.sz)
	if err != nil {
		return err
	}
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return err
	}
	logf("blobherd: writing and pushing the %d MiB layer", p.mib)
	layer, d, err := bigImage(ctx, b.dir, b.direct.host, "bench/blobherd", p.mib, 7, signer)
	if err != nil {
		return err
	}
	want, err := fileCRC(layer.path)
	if err != nil {
		return err
	}
	up, err := startThrottledUpstream(b.direct.url(), p.mibps<<20)
	if err != nil {
		return err
	}
	pub := signer.PublicKeyPEM()
	client := newClient()
	run := func(mode string, clients int) (blobHerdRun, error) {
		extra := ""
		if mode == "cache" {
			// A herd is many nodes, which the default sendfile mode
			// sends files to with sendfile(2); the bench's clients are
			// on loopback, which it would send copies to.
			extra = fmt.Sprintf("blob_cache: {dir: %q, max_gib: %d, min_free_gib: 0, sendfile: always}\n",
				filepath.Join(b.dir, "blobherd-cache-"+strconv.Itoa(clients)), p.mib/1024+2)
		}
		pc, err := startPortcullisYAML(ctx, client, b.pcBin, b.dir, fmt.Sprintf("portcullis-blobherd-%s-%d", mode, clients), pub, "http://"+up.host, extra)
		if err != nil {
			return blobHerdRun{}, err
		}
		defer pc.proc.Stop()
		if err := do(ctx, client, http.MethodGet, manifestURL(&pc.target, d), http.StatusOK); err != nil {
			return blobHerdRun{}, fmt.Errorf("blobherd: allow the image: %w", err)
		}
		return runBlobHerd(ctx, pc, up, blobURL(&pc.target, "bench/blobherd", layer), layer.size, want, mode, clients)
	}

	logf("blobherd: one pull alone (upstream throttled to %d MiB/s; 0 = none)", p.mibps)
	single, err := run("memory", 1)
	if err != nil {
		return err
	}
	// For comparison: the same clients pulling the same bytes from a
	// server that only writes them from memory, as fast as they take them.
	logf("blobherd: %d clients from a bare sender", p.clients)
	sender, err := startBytes(ctx, client, b.dir, layer.path)
	if err != nil {
		return err
	}
	s0, _ := procCPU(sender.proc.Pid())
	c0, _ := procCPU(os.Getpid())
	senderOK, senderErr, senderLast := fireHerd(ctx, sender.url()+"/blob", layer.size, want, int(p.clients))
	s1, _ := procCPU(sender.proc.Pid())
	c1, _ := procCPU(os.Getpid())
	sender.proc.Stop()
	if senderOK != int(p.clients) {
		return fmt.Errorf("blobherd: bare sender: %d of %d clients got the blob: %s", senderOK, p.clients, senderErr)
	}
	var runs []blobHerdRun
	for _, mode := range []string{"memory", "cache"} {
		logf("blobherd: %d clients, %s", p.clients, mode)
		r, err := run(mode, int(p.clients))
		if err != nil {
			return err
		}
		r.targetsMet = r.ok == r.clients && r.upstream == 1 && float64(r.last) <= 1.5*float64(single.last) && r.rssGrowth < 64<<20
		runs = append(runs, r)
	}
	note := fmt.Sprintf("blobherd: %d MiB blob, upstream throttled to %d MiB/s (0 = loopback); one pull alone %s",
		p.mib, p.mibps, single.last.Round(time.Millisecond))
	b.res.notes = append(b.res.notes, note)
	logf("%s", note)
	senderNote := fmt.Sprintf("blobherd bare sender: the same %d clients from a server that only writes the blob from memory (its own process, no upstream, nothing checked): last client %s (%.2f× one pull; the goal is ≤ 1.5×); CPU sender %s, clients %s",
		p.clients, senderLast.Round(time.Millisecond), float64(senderLast)/float64(single.last), (s1 - s0).Round(10*time.Millisecond), (c1 - c0).Round(10*time.Millisecond))
	b.res.notes = append(b.res.notes, senderNote)
	logf("%s", senderNote)
	for _, r := range runs {
		verdict := "met"
		if !r.targetsMet {
			verdict = "MISS"
		}
		line := fmt.Sprintf("blobherd %s: %d/%d clients got the blob (first error %q); upstream GETs %d; last client %s (%.2f× one pull); RSS growth %d MiB; joins %v; warm pull %s with %d upstream GETs; targets %s",
			r.mode, r.ok, r.clients, r.firstErr, r.upstream, r.last.Round(time.Millisecond), float64(r.last)/float64(single.last),
			r.rssGrowth>>20, r.joins, r.warmPull.Round(time.Millisecond), r.afterWarm, verdict)
		if r.last > 0 {
			// Both share this machine's cores: what the herd would take if
			// Portcullis had them to itself, its clients elsewhere as a
			// fleet's are.
			cores := float64(runtime.NumCPU())
			line += fmt.Sprintf("; CPU Portcullis %s, clients %s (%.0f%% and %.0f%% of %d cores): Portcullis alone needs %s (%.2f× one pull)",
				r.proxyCPU.Round(10*time.Millisecond), r.clientCPU.Round(10*time.Millisecond),
				100*r.proxyCPU.Seconds()/(cores*r.last.Seconds()), 100*r.clientCPU.Seconds()/(cores*r.last.Seconds()), runtime.NumCPU(),
				(r.proxyCPU / time.Duration(cores)).Round(time.Millisecond), r.proxyCPU.Seconds()/cores/single.last.Seconds())
		}
		if r.warmHerd > 0 {
			line += fmt.Sprintf("; the same herd from the warm cache %s (%.2f× one pull; the first herd %.2f× it)",
				r.warmHerd.Round(time.Millisecond), float64(r.warmHerd)/float64(single.last), float64(r.last)/float64(r.warmHerd))
		}
		if len(r.cacheStats) > 0 {
			line += "; " + strings.Join(r.cacheStats, ", ")
		}
		b.res.notes = append(b.res.notes, line)
		logf("%s", line)
	}
	return nil
}

// runBlobHerd fires clients simultaneous GETs of blobURL, checks every
// body, and samples the proxy's RSS while they run.
func runBlobHerd(ctx context.Context, pc *portcullis, up *throttledUpstream, blobURL string, size int64, want uint32, mode string, clients int) (blobHerdRun, error) {
	r := blobHerdRun{mode: mode, clients: clients}
	base, err := hostile.ReadStats(pc.proc.Pid())
	if err != nil {
		return r, err
	}
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer teardown.Guard()
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if s, err := hostile.ReadStats(pc.proc.Pid()); err == nil && s.RSS > peak.Load() {
				peak.Store(s.RSS)
			}
			select {
			case <-t.C:
			case <-stopSampling:
				return
			}
		}
	}()
	up.blobGets.Store(0)
	pc0, _ := procCPU(pc.proc.Pid())
	cl0, _ := procCPU(os.Getpid())
	r.ok, r.firstErr, r.last = fireHerd(ctx, blobURL, size, want, clients)
	pc1, _ := procCPU(pc.proc.Pid())
	cl1, _ := procCPU(os.Getpid())
	r.proxyCPU, r.clientCPU = pc1-pc0, cl1-cl0
	close(stopSampling)
	<-sampled
	r.upstream = up.blobGets.Load()
	r.rssGrowth = max(peak.Load()-base.RSS, 0)
	r.joins, _ = scrapeOr0(ctx, newClient(), pc.metricsURL(), "portcullis_blob_shared_joins_total")

	// A pull after the herd: from the cache, no upstream request.
	up.blobGets.Store(0)
	t0 := time.Now()
	c := &http.Client{Transport: harness.NewTransport(1)}
	if err := pullAndCheck(ctx, c, blobURL, size, want); err != nil && r.firstErr == "" {
		r.firstErr = "warm pull: " + err.Error()
	}
	c.CloseIdleConnections()
	r.warmPull = time.Since(t0)
	r.afterWarm = up.blobGets.Load()
	if mode == "cache" {
		// The same herd again, now that every byte is on disk: what fanning
		// the blob out costs this machine when no client waits for the
		// upstream, the floor the first herd's last client is held to.
		ok, ferr, last := fireHerd(ctx, blobURL, size, want, clients)
		if ok != clients && r.firstErr == "" {
			r.firstErr = "warm herd: " + ferr
		}
		r.warmHerd = last
		r.afterWarm += up.blobGets.Load()
	}
	r.cacheHits, _ = scrapeOr0(ctx, newClient(), pc.metricsURL(), "portcullis_blob_cache_hits_total")
	if mode == "cache" {
		for _, m := range []string{`portcullis_blob_shared_fetches_total{mode="cache"}`, "portcullis_blob_cache_files",
			"portcullis_blob_cache_refused_total", `portcullis_blob_cache_errors_total{op="create"}`, `portcullis_blob_cache_errors_total{op="commit"}`} {
			v, err := scrapeOr0(ctx, newClient(), pc.metricsURL(), m)
			if err != nil {
				return r, err
			}
			r.cacheStats = append(r.cacheStats, fmt.Sprintf("%s %v", m, v))
		}
	}
	return r, nil
}

// fireHerd starts clients GETs of url at once, each on its own
// connection as each node of a fleet has, checks every body, and returns
// how many were right, the first error and when the last one finished.
func fireHerd(ctx context.Context, url string, size int64, want uint32, clients int) (ok int, firstErr string, last time.Duration) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		gate  = make(chan struct{})
		start time.Time
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			c := &http.Client{Transport: harness.NewTransport(1)}
			defer c.CloseIdleConnections()
			<-gate
			err := pullAndCheck(ctx, c, url, size, want)
			mu.Lock()
			defer mu.Unlock()
			last = max(last, time.Since(start))
			if err == nil {
				ok++
			} else if firstErr == "" {
				firstErr = err.Error()
			}
		}()
	}
	start = time.Now()
	close(gate)
	wg.Wait()
	return ok, firstErr, last
}

// pullAndCheck reads the whole blob and compares its length and CRC-32C
// with the file pushed: the proxy already checked the digest, the bench
// checks that every client got those bytes, cheaply enough that a
// hundred clients on two cores measure the proxy, not the checking.
func pullAndCheck(ctx context.Context, c *http.Client, url string, size int64, want uint32) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	if n != size || h.Sum32() != want {
		return fmt.Errorf("%d bytes that are not the blob", n)
	}
	return nil
}

func fileCRC(path string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	_, err = io.Copy(h, f)
	return h.Sum32(), err
}

// throttledUpstream is a reverse proxy in front of the direct registry
// that counts blob GETs and sends each blob body at most at rate bytes/s.
type throttledUpstream struct {
	host     string
	blobGets atomic.Int64
}

func startThrottledUpstream(upstream string, rate int64) (*throttledUpstream, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &throttledUpstream{host: ln.Addr().String()}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = u.Host },
		Transport: newClient().Transport,
		ErrorLog:  log.New(io.Discard, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			if rate > 0 && resp.Request.Method == http.MethodGet && classify(resp.Request.URL.Path) == kindBlob {
				resp.Body = &throttled{rc: resp.Body, rate: rate, start: time.Now()}
			}
			return nil
		},
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && classify(r.URL.Path) == kindBlob {
				t.blobGets.Add(1)
			}
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer teardown.Guard()
		_ = srv.Serve(ln)
	}()
	teardown.Add(func() { _ = srv.Close() })
	return t, nil
}

// throttled paces reads to rate bytes per second since start.
type throttled struct {
	rc    io.ReadCloser
	rate  int64
	start time.Time
	n     int64
}

func (t *throttled) Read(p []byte) (int, error) {
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	if ahead := time.Duration(float64(t.n)/float64(t.rate)*float64(time.Second)) - time.Since(t.start); ahead > 0 {
		time.Sleep(ahead)
	}
	n, err := t.rc.Read(p)
	t.n += int64(n)
	return n, err
}

func (t *throttled) Close() error { return t.rc.Close() }

// startPortcullisYAML is startPortcullis with extra YAML appended to the
// bench configuration.
func startPortcullisYAML(ctx context.Context, client *http.Client, bin, dir, name string, pub []byte, upstream, extra string) (*portcullis, error) {
	cfg := defaultConfig(upstream)
	cfgDir := filepath.Join(dir, name)
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "cosign.pub"), pub, 0o600); err != nil {
		return nil, err
	}
	var err error
	if cfg.Port, err = harness.FreePort(); err != nil {
		return nil, err
	}
	if cfg.AdminPort, err = harness.FreePort(); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(cfgDir, "portcullis.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.YAML()+extra), 0o600); err != nil {
		return nil, err
	}
	p, err := harness.Start(teardown, dir, name, bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	pc := &portcullis{target: target{name: name, host: fmt.Sprintf("127.0.0.1:%d", cfg.Port), proc: p}, admin: fmt.Sprintf("127.0.0.1:%d", cfg.AdminPort)}
	if err := p.WaitReady(ctx, client, "http://"+pc.admin+"/readyz", cfg.AdminPort, cfg.Port); err != nil {
		p.Stop()
		return nil, err
	}
	return pc, nil
}
