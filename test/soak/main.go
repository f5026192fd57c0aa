package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// Hostile client kinds, selectable with -hostile.
const (
	hostileBomb  = "bomb"
	hostileFlood = "flood"
	hostileStall = "stall"
)

// After the load stops, goroutines and descriptors must come back to
// within settleWithin of their values before the load (plus a few for the
// observation's own connections), and RSS to within settleWithin of its
// peak under ordinary load: that working set, not an idle process, is the
// level a leak or an unbounded attack would show above. An idle Go
// process returns freed heap only after a collection, which the runtime
// forces every 2 minutes, and pooled buffers survive one collection, so
// the default wait (-settle) covers two.
const (
	settleWithin     = 0.10
	settleGoroutines = 10
	settleFDs        = 5
)

type options struct {
	duration     time.Duration
	clients      int
	out          string
	pcBin        string
	hostile      []string
	rssLimit     int64
	upstreamMode string
	restarts     int
	stalls       int
	floodN       int
	bombs        int
	settle       time.Duration
	timeout      time.Duration
}

func main() {
	regDir := flag.String("registry-dir", "", "serve a registry with its content under `DIR` (the soak's own upstream; internal)")
	regAddr := flag.String("registry-addr", "127.0.0.1:0", "listen `ADDR` in registry mode (internal)")
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs")
	flag.IntVar(&o.clients, "clients", 64, "concurrent load clients")
	flag.StringVar(&o.out, "out", "", "also write the report to `FILE`")
	flag.StringVar(&o.pcBin, "portcullis", "", "portcullis binary to run (default: build ./cmd/portcullis)")
	hostileFlag := flag.String("hostile", "bomb,flood,stall", "hostile clients to run alongside the load (comma-separated; \"\" for none)")
	rssLimitMiB := flag.Int64("rss-limit", 4096, "kill Portcullis, and fail, when its RSS passes this many `MiB`")
	flag.StringVar(&o.upstreamMode, "upstream", "auto", "upstream registry: auto, distribution (docker-registry) or builtin")
	flag.IntVar(&o.restarts, "restarts", 2, "times the upstream is killed with SIGKILL and started again")
	flag.IntVar(&o.stalls, "stalls", 300, "connections per stall round")
	flag.IntVar(&o.floodN, "flood", 500, "abandoned requests per flood round")
	flag.IntVar(&o.bombs, "bombs", 2, "evidence bomb subjects (each 64 referrers of about 8 MiB)")
	flag.DurationVar(&o.settle, "settle", 5*time.Minute, "longest wait for resources to come back after the load stops")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "client deadline per request")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *regDir != "" {
		if err := serveRegistry(*regDir, *regAddr); err != nil {
			fmt.Fprintln(os.Stderr, "soak registry:", err)
			os.Exit(1)
		}
		return
	}
	o.rssLimit = *rssLimitMiB << 20
	for _, h := range strings.Split(*hostileFlag, ",") {
		h = strings.TrimSpace(h)
		switch h {
		case "":
		case hostileBomb, hostileFlood, hostileStall:
			o.hostile = append(o.hostile, h)
		default:
			fmt.Fprintf(os.Stderr, "soak: unknown hostile client %q (bomb, flood, stall)\n", h)
			os.Exit(2)
		}
	}
	if o.duration <= 0 || o.clients <= 0 {
		fmt.Fprintln(os.Stderr, "soak: -duration and -clients must be positive")
		os.Exit(2)
	}

	ctx, cancel := teardown.OnSignal("soak")
	defer teardown.Guard()

	rep, err := run(ctx, o)
	teardown.Run()
	cancel()
	if rep != nil {
		text := rep.markdown()
		fmt.Print(text)
		if o.out != "" {
			if werr := os.WriteFile(o.out, []byte(text), 0o644); werr != nil && err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !rep.pass() {
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "soak: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

// soak is one run's state.
type soak struct {
	o        options
	dir      string
	client   *http.Client
	up       *upstream
	pc       *harness.Portcullis
	tarpit   *hostile.Tarpit
	c        *content
	t        *tally
	k        *checker
	rep      *report
	start    time.Time
	eventsMu sync.Mutex
}

func (s *soak) event(format string, a ...any) {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	at := time.Duration(0)
	if !s.start.IsZero() {
		at = time.Since(s.start).Round(100 * time.Millisecond)
	}
	msg := fmt.Sprintf(format, a...)
	s.rep.events = append(s.rep.events, fmt.Sprintf("+%s %s", at, msg))
	logf("%s", msg)
}

func (s *soak) observe(ctx context.Context) (hostile.Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return hostile.Observe(ctx, s.client, s.pc.Pid(), s.pc.MetricsURL())
}

func run(ctx context.Context, o options) (*report, error) {
	rep := &report{o: o, started: time.Now(), env: environment()}
	s := &soak{o: o, client: newClient(), t: newTally(), rep: rep}
	rep.t = s.t
	var err error
	if s.dir, err = os.MkdirTemp("", "portcullis-soak-"); err != nil {
		return nil, err
	}
	dir := s.dir
	teardown.Add(func() { _ = os.RemoveAll(dir) })

	pcBin := o.pcBin
	if pcBin == "" {
		logf("building ./cmd/portcullis")
		if pcBin, err = harness.BuildPortcullis(ctx, dir); err != nil {
			return nil, err
		}
	} else if pcBin, err = filepath.Abs(pcBin); err != nil {
		return nil, err
	}

	if s.up, err = newUpstream(dir, o.upstreamMode); err != nil {
		return nil, err
	}
	rep.upstream = s.up.kind
	if err := s.up.start(ctx, s.client); err != nil {
		return nil, err
	}
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return nil, err
	}
	sz := pushSizes{allowed: 32, denied: 16, mediumMiB: 4, stallMiB: 16}
	if slices.Contains(o.hostile, hostileBomb) {
		sz.bombs, sz.pbombs = o.bombs, 1
	}
	logf("pushing content to %s (%d evidence bombs, %d predicate bombs)", s.up.kind, sz.bombs, sz.pbombs)
	t0 := time.Now()
	if s.c, err = push(ctx, s.up.host(), sz, signer); err != nil {
		return nil, fmt.Errorf("failed to push content: %w", err)
	}
	rep.c, rep.pushed = s.c, time.Since(t0)

	if s.tarpit, err = hostile.StartTarpit(); err != nil {
		return nil, err
	}
	teardown.Add(s.tarpit.Close)
	if err := s.startPortcullis(ctx, pcBin, signer.PublicKeyPEM()); err != nil {
		return nil, err
	}
	s.k = &checker{client: s.client, base: "http://" + s.pc.Host, c: s.c, t: s.t, timeout: o.timeout}

	// Priming: every allowed manifest once, so its blobs are open under
	// blob gating before the load asks for them.
	prime := &checker{client: s.client, base: s.k.base, c: s.c, t: newTally(), timeout: o.timeout}
	for _, it := range s.c.allowed {
		prime.manifest(ctx, classDigest, http.MethodGet, it.repo, it.digest, it.digest)
	}
	if n := prime.t.verified[classDigest]; n != len(s.c.allowed) {
		return rep, fmt.Errorf("priming: %d of %d allowed manifests served: %s", n, len(s.c.allowed), strings.Join(prime.t.outcomes(classDigest), ", "))
	}

	err = s.load(ctx)
	rep.elapsed = time.Since(rep.started)
	return rep, err
}

// startPortcullis starts the proxy with the upstream, a tarpit upstream
// for the floods, the key, a provenance boundary for the predicate bomb
// and a signature boundary for everything else.
func (s *soak) startPortcullis(ctx context.Context, bin string, pub []byte) error {
	cfg := harness.Config{
		Upstreams: []harness.Upstream{{Name: "origin", URL: s.up.url()}, {Name: "tarpit", URL: s.tarpit.URL}},
		Key:       "soak",
		Boundaries: []harness.Boundary{{
			Name: "attested", Upstream: "origin", Repositories: []string{"soak/pbomb"}, Provenance: true,
		}},
	}
	var err error
	s.pc, err = harness.StartPortcullis(ctx, teardown, s.client, bin, s.dir, "portcullis", pub, cfg)
	return err
}

// load runs the clients, the hostile set and the upstream crashes for the
// duration, then stops them and waits for the proxy to settle.
func (s *soak) load(ctx context.Context) error {
	o, rep := s.o, s.rep
	var err error
	if rep.snaps.start, err = s.snapshot(ctx, "idle, before the load"); err != nil {
		return err
	}
	s.start = time.Now()
	rep.loadStarted = s.start
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()

	// The proxy must neither die nor pass the RSS limit; either ends the
	// run early as a failure.
	wd := hostile.Watch(s.pc.Pid(), 100*time.Millisecond, o.rssLimit, s.pc.KillNow)
	go func() {
		defer teardown.Guard()
		select {
		case <-s.pc.Exited():
			reason := fmt.Sprintf("Portcullis exited: %v: %s", s.pc.Err(), lastLine(s.pc.LogTail()))
			if wd.Killed() {
				reason = fmt.Sprintf("Portcullis killed by the watchdog: RSS above %s", hostile.MiB(o.rssLimit))
			}
			s.rep.fail(reason)
			s.event("%s", reason)
			stopLoad()
		case <-lctx.Done():
		}
	}()

	var wg sync.WaitGroup
	spawn := func(f func()) {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			f()
		}()
	}
	for i := range o.clients {
		spawn(func() { s.k.loadClient(lctx, uint64(i+1)) })
	}
	spawn(func() { s.sample(lctx) })
	s.event("ordinary load started: %d clients", o.clients)
	// The first part of the run is ordinary load only: its peak RSS is the
	// working set the proxy needs, the level RSS must come back to.
	warm := min(max(o.duration/10, 10*time.Second), time.Minute)
	if sleep(lctx, warm) {
		rep.snaps.warm, _ = s.snapshot(ctx, "ordinary load only")
		rep.warmPeak = wd.Peak()
	}
	for _, h := range o.hostile {
		switch h {
		case hostileBomb:
			spawn(func() { s.bombLoop(lctx) })
		case hostileFlood:
			spawn(func() { s.floodLoop(lctx) })
		case hostileStall:
			spawn(func() { s.stallLoop(lctx) })
		}
	}
	spawn(func() { s.crashLoop(lctx, warm) })
	s.event("hostile clients started: %s", hostileText(o.hostile))

	if sleep(lctx, o.duration/2) {
		rep.snaps.middle, _ = s.snapshot(ctx, "middle")
	}
	sleep(lctx, time.Until(s.start.Add(o.duration)))
	if s.pc.Alive() {
		rep.snaps.end, _ = s.snapshot(ctx, "end")
	}
	stopLoad()
	s.event("load stopping")
	wg.Wait()
	rep.peak, rep.killed = wd.Stop()
	rep.requestsAtStop = s.t.total()
	s.event("load stopped")
	if !s.pc.Alive() {
		return nil
	}
	base, warmPeak := rep.snaps.start.s, rep.warmPeak
	st, took, ok := hostile.Settle(ctx, time.Second, o.settle, func() (hostile.Stats, error) { return s.observe(ctx) },
		func(x hostile.Stats) bool { return settled(base, warmPeak, x) })
	rep.snaps.after = snapshot{label: "after the load stopped", at: time.Since(s.start), s: st, requests: s.t.total()}
	rep.settledIn, rep.settledOK = took, ok
	return nil
}

// settled reports whether x is back within the settle bounds: goroutines
// and descriptors of base, the idle process, and RSS of warmPeak.
func settled(base hostile.Stats, warmPeak int64, x hostile.Stats) bool {
	return within(x.Goroutines, base.Goroutines, settleGoroutines) &&
		within(float64(x.FDs), float64(base.FDs), settleFDs) &&
		within(float64(x.RSS), float64(warmPeak), 0)
}

func within(v, base, slack float64) bool {
	return v >= 0 && v <= base*(1+settleWithin)+slack
}

func (s *soak) snapshot(ctx context.Context, label string) (snapshot, error) {
	st, err := s.observe(ctx)
	if err != nil {
		return snapshot{}, err
	}
	at := time.Duration(0)
	if !s.start.IsZero() {
		at = time.Since(s.start)
	}
	return snapshot{label: label, at: at, s: st, requests: s.t.total()}, nil
}

// sample records the proxy's resources every 5 s for the peaks.
func (s *soak) sample(ctx context.Context) {
	for sleep(ctx, 5*time.Second) {
		st, err := s.observe(ctx)
		if err != nil {
			continue
		}
		s.rep.mu.Lock()
		s.rep.maxGoroutines = max(s.rep.maxGoroutines, st.Goroutines)
		s.rep.maxFDs = max(s.rep.maxFDs, st.FDs)
		s.rep.maxThreads = max(s.rep.maxThreads, st.Threads)
		s.rep.mu.Unlock()
	}
}

// crashLoop kills the upstream with SIGKILL o.restarts times, evenly
// spread over the run after the ordinary-load part, and starts it again
// after a short outage.
func (s *soak) crashLoop(ctx context.Context, after time.Duration) {
	n := s.o.restarts
	down := min(max(s.o.duration/30, 5*time.Second), 20*time.Second)
	for i := 1; i <= n; i++ {
		at := s.start.Add(after + (s.o.duration-after)*time.Duration(i)/time.Duration(n+1))
		if !sleep(ctx, time.Until(at)) {
			return
		}
		s.k.down.Store(true)
		s.up.crash()
		s.event("upstream killed (SIGKILL), down for %s", down)
		if !sleep(ctx, down) {
			// Bring it back anyway: the settle phase and teardown need
			// no upstream, but a shortened run should not leave it dead.
			_ = s.up.restart(context.Background(), s.client)
			return
		}
		t0 := time.Now()
		if err := s.up.restart(ctx, s.client); err != nil {
			s.event("upstream failed to restart: %v", err)
			s.rep.fail("upstream failed to restart")
			return
		}
		// Answers for requests that started during the outage may still
		// come in; they count as the outage's for a moment longer.
		go func() {
			if sleep(ctx, 2*time.Second) {
				s.k.down.Store(false)
			}
		}()
		s.rep.mu.Lock()
		s.rep.restarts++
		s.rep.mu.Unlock()
		s.event("upstream restarted and ready in %s", time.Since(t0).Round(10*time.Millisecond))
	}
}

// bombLoop asks for every bomb subject at once, every 5 s. Deny verdicts
// are cached for deny_ttl, so each subject is verified again only when its
// verdict has expired.
func (s *soak) bombLoop(ctx context.Context) {
	for {
		var wg sync.WaitGroup
		for _, set := range []struct {
			class string
			items []item
		}{{classBomb, s.c.bombs}, {classPBomb, s.c.pbombs}} {
			for _, it := range set.items {
				wg.Add(1)
				go func() {
					defer teardown.Guard()
					defer wg.Done()
					s.k.manifest(ctx, set.class, http.MethodGet, it.repo, it.digest, "")
				}()
			}
		}
		wg.Wait()
		if !sleep(ctx, 5*time.Second) {
			return
		}
	}
}

// floodLoop sends a flood of abandoned requests for random digests through
// the tarpit upstream every 20 s.
func (s *soak) floodLoop(ctx context.Context) {
	for sleep(ctx, 10*time.Second) {
		res := hostile.Flood(ctx, s.k.base, "flood/x", "?ns=tarpit", s.o.floodN, 64, 100*time.Millisecond)
		if ctx.Err() != nil {
			// Requests cut by the end of the run are not the flood's.
			return
		}
		logf("flood: %d abandoned, answered: %s", res.Abandoned, res.Summary())
		s.t.add(classFlood, "abandoned", res.Abandoned)
		for code, n := range res.Answered {
			s.t.add(classFlood, strconv.Itoa(code), n)
			if code == http.StatusOK {
				s.t.violation("flood: %d random digests answered 200", n)
			}
		}
		for k, n := range res.ConnErrors {
			s.t.add(classFlood, "conn "+k, n)
		}
		if !sleep(ctx, 10*time.Second) {
			return
		}
	}
}

// stallLoop opens o.stalls connections that ask for the 16 MiB allowed
// blob and never read, holds them for 15 s, and starts again 10 s after
// closing them.
func (s *soak) stallLoop(ctx context.Context) {
	path := "/v2/" + s.c.stall.repo + "/blobs/" + s.c.stall.digest
	for sleep(ctx, 5*time.Second) {
		st, err := hostile.OpenStalls(ctx, s.pc.Host, path, s.o.stalls, 4<<10)
		if err != nil {
			if ctx.Err() == nil {
				s.t.add(classStall, "conn "+hostile.ConnErrorKind(err), 1)
			}
			continue
		}
		logf("stall: %d connections open", st.Len())
		sleep(ctx, 15*time.Second)
		for k, n := range st.Statuses(2 * time.Second) {
			s.t.add(classStall, k, n)
		}
		st.Close()
		logf("stall: closed")
		if !sleep(ctx, 5*time.Second) {
			return
		}
	}
}

// sleep waits d or until ctx is done; it reports whether the whole d
// passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func hostileText(h []string) string {
	if len(h) == 0 {
		return "none"
	}
	return strings.Join(h, ", ")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

func environment() []string {
	env := []string{fmt.Sprintf("CPU: %d cores, Go %s %s/%s", runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			env = append(env, "load average at start: "+strings.Join(f[:3], " "))
		}
	}
	return env
}
