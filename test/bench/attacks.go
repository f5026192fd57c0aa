package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// Targets of the bounded-resources work, checked (printed, not asserted)
// by the attack phases.
const (
	bombGrowthOne       = 64 << 20  // RSS growth of one bomb verification
	bombGrowthThree     = 256 << 20 // three concurrent bombs together
	bombDenyWithin      = 2 * time.Second
	stallPerConnTarget  = 128 << 10 // RSS growth per stalled stream
	settledWithin       = 0.10      // goroutines and fds back within 10 % …
	settledGoroutines   = 10        // … plus this many, for the admin scrape itself
	settledFDs          = 5         // … plus this many, for keep-alive and the scrape
	bombConcurrentPulls = 3
)

// attackTransport opens a connection per request, so a pull's answer
// time never includes waiting for another pull's connection.
var attackTransport = &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true}

// attackSizes are the attack phases' counts for one run.
type attackSizes struct {
	floodN, floodConc int
	floodAbandon      time.Duration
	settle            time.Duration // longest wait for resources to come back
	stalls            int
	stallMiB          int64
}

func attackSizesFor(quick bool) attackSizes {
	if quick {
		return attackSizes{floodN: 500, floodConc: 64, floodAbandon: 100 * time.Millisecond, settle: 15 * time.Second, stalls: 300, stallMiB: 16}
	}
	// The proxy's default verification timeout is 60 s: a flood's work
	// that nothing cancels is gone by then.
	return attackSizes{floodN: 5000, floodConc: 256, floodAbandon: 100 * time.Millisecond, settle: 75 * time.Second, stalls: 300, stallMiB: 16}
}

// bombRun is one measurement: pulls of distinct bomb subjects at once
// through a fresh Portcullis.
type bombRun struct {
	pulls      int
	before     hostile.Stats
	after      hostile.Stats
	polledPeak int64
	killed     bool // the RSS watchdog stopped the proxy
	outcomes   []pullOutcome
}

type pullOutcome struct {
	status  int // 0: no answer
	latency time.Duration
	msg     string
}

// growth is the peak RSS over the RSS before the pulls; for a process the
// watchdog killed, the largest RSS polled (a lower bound).
func (r bombRun) growth() int64 {
	if r.killed || r.after.HWM == 0 {
		return r.polledPeak - r.before.RSS
	}
	return r.after.HWM - r.before.RSS
}

func (r bombRun) allDeniedWithin(d time.Duration) bool {
	if r.killed || len(r.outcomes) == 0 {
		return false
	}
	for _, o := range r.outcomes {
		if o.status != http.StatusForbidden || o.latency >= d {
			return false
		}
	}
	return true
}

func (r bombRun) slowest() time.Duration {
	var m time.Duration
	for _, o := range r.outcomes {
		m = max(m, o.latency)
	}
	return m
}

type bombResult struct {
	kind     string // "evidence bomb", "predicate bomb", "key bomb"
	shape    string
	info     hostile.BombInfo
	subjects int
	pushed   time.Duration // pushing every subject's evidence
	runs     []bombRun
}

type floodOutcome struct {
	n, conc       int
	abandon       time.Duration
	res           hostile.FloodResult
	before, peak  hostile.Stats
	after5        hostile.Stats
	heldPeak      int64 // upstream requests the tarpit held at once
	held5         int64 // … still held 5 s after the clients left
	settled       hostile.Stats
	settledIn     time.Duration
	settledOK     bool
	settleLimit   time.Duration
	probeStatus   string // a fresh request after the flood
	upstreamTotal int64
}

type stallOutcome struct {
	n          int
	blobMiB    int64
	before     hostile.Stats
	after      hostile.Stats
	quiet      bool
	statuses   map[string]int
	released   hostile.Stats
	releasedIn time.Duration
	releasedOK bool
}

func (s stallOutcome) perConn() int64 {
	if s.n == 0 {
		return 0
	}
	return (s.after.HWM - s.before.RSS) / int64(s.n)
}

type attackResults struct {
	rssLimit int64
	bombs    []*bombResult
	flood    *floodOutcome
	stall    *stallOutcome
}

// attacks runs the selected attack phases, each against fresh Portcullis
// processes with a key of their own.
func (b *bench) attacks(ctx context.Context) error {
	if !b.sel.has(phaseBomb, phaseFlood, phaseStall) {
		return nil
	}
	az := attackSizesFor(b.res.quick)
	ar := &attackResults{rssLimit: b.rssLimit}
	b.res.attacks = ar
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return err
	}
	pub := signer.PublicKeyPEM()
	if b.sel.has(phaseBomb) {
		if err := b.bombs(ctx, ar, signer); err != nil {
			return err
		}
	}
	if b.sel.has(phaseFlood) {
		logf("flood: %d requests for random digests abandoned after %s", az.floodN, az.floodAbandon)
		if ar.flood, err = b.flood(ctx, az, pub); err != nil {
			return err
		}
	}
	if b.sel.has(phaseStall) {
		logf("stall: %d clients that never read a %d MiB blob", az.stalls, az.stallMiB)
		if ar.stall, err = b.stall(ctx, az, signer); err != nil {
			return err
		}
	}
	return nil
}

// attackConfig is the default bench config plus a boundary over
// bench/pbomb that requires SLSA provenance, so the predicate bomb's
// statements are read where a rule asks for them.
func attackConfig(upstream string) harness.Config {
	return benchConfig(upstream, nil, harness.Boundary{
		Name: "attested", Upstream: "*", Repositories: []string{"bench/pbomb"}, Provenance: true,
	})
}

// startAttacked starts a Portcullis with attackConfig.
func (b *bench) startAttacked(ctx context.Context, name, upstream string, pub []byte) (*portcullis, error) {
	return startPortcullisWith(ctx, b.client, b.pcBin, b.dir, name, pub, attackConfig(upstream))
}

func (pc *portcullis) metricsURL() string { return "http://" + pc.admin + "/metrics" }

func (b *bench) observe(ctx context.Context, pc *portcullis) (hostile.Stats, error) {
	return hostile.Observe(ctx, b.client, pc.proc.Pid(), pc.metricsURL())
}

// bombs pushes both bombs, each for 1 + bombConcurrentPulls subjects, and
// pulls them: one alone, then the others at once, each time through a
// fresh Portcullis so that one measurement's retained heap is not the
// next one's baseline.
func (b *bench) bombs(ctx context.Context, ar *attackResults, signer *fixtures.KeySigner) error {
	host := b.direct.host
	ok, err := pushSignedSmall(ctx, host, "bench/bomb-ok", 1, signer)
	if err != nil {
		return err
	}
	kinds := []struct {
		kind, repo, shape string
		signed            bool // the subject itself carries a valid signature
		push              func(context.Context, name.Digest) (hostile.BombInfo, error)
		// subject pushes the subject itself, for a bomb that is the
		// subject's manifest; push is then not used.
		subject func(ctx context.Context, ref name.Reference, nonce int) (name.Digest, hostile.BombInfo, error)
	}{
		{
			kind: "evidence bomb", repo: "bench/bomb",
			shape: fmt.Sprintf("%d referrers, each a sigstore bundle of about %s signed by the trusted key over another digest; the subject has no signature", hostile.BombReferrers, hostile.MiB(hostile.BombBundleBytes)),
			push: func(ctx context.Context, d name.Digest) (hostile.BombInfo, error) {
				return hostile.PushEvidenceBomb(ctx, d, signer, hostile.BombReferrers, hostile.BombBundleBytes)
			},
		},
		{
			kind: "predicate bomb", repo: "bench/pbomb", signed: true,
			shape: fmt.Sprintf("%d referrers, each an SLSA v1 provenance bundle signed by the trusted key over another digest whose predicate is %s of `[{},{},…]`; the subject is validly signed and its boundary requires provenance", hostile.BombReferrers, hostile.MiB(hostile.PredicateBombBytes)),
			push: func(ctx context.Context, d name.Digest) (hostile.BombInfo, error) {
				return hostile.PushPredicateBomb(ctx, d, signer, hostile.BombReferrers, hostile.PredicateBombBytes)
			},
		},
		{
			kind: "key bomb", repo: "bench/kbomb",
			shape: fmt.Sprintf("an unsigned image whose manifest is %s, nearly all of it annotations with distinct keys, the last one escaped: each key must be checked against the others before anything about the manifest is known", hostile.MiB(hostile.KeyBombBytes)),
			subject: func(ctx context.Context, ref name.Reference, nonce int) (name.Digest, hostile.BombInfo, error) {
				return hostile.PushKeyBomb(ctx, ref, hostile.KeyBombBytes, nonce)
			},
		},
	}
	for _, k := range kinds {
		n := 1 + bombConcurrentPulls
		if k.subject != nil {
			logf("%s: pushing %d subjects", k.kind, n)
		} else {
			logf("%s: pushing %d subjects with %d referrers each", k.kind, n, hostile.BombReferrers)
		}
		t0 := time.Now()
		subjects := make([]name.Digest, n)
		infos := make([]hostile.BombInfo, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(2)
		for i := range n {
			g.Go(func() error {
				defer teardown.Guard()
				ref, err := name.ParseReference(fmt.Sprintf("%s/%s:s%d", host, k.repo, i), name.Insecure)
				if err != nil {
					return err
				}
				if k.subject != nil {
					subjects[i], infos[i], err = k.subject(gctx, ref, i)
					return err
				}
				d, err := fixtures.PushImage(gctx, ref)
				if err != nil {
					return err
				}
				if k.signed {
					if err := fixtures.AttachLegacySignature(gctx, d, signer, fixtures.Tamper{}); err != nil {
						return err
					}
				}
				subjects[i] = d
				infos[i], err = k.push(gctx, d)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("%s: %w", k.kind, err)
		}
		br := &bombResult{kind: k.kind, shape: k.shape, info: infos[0], subjects: n, pushed: time.Since(t0)}
		ar.bombs = append(ar.bombs, br)
		for _, group := range [][]name.Digest{subjects[:1], subjects[1:]} {
			logf("%s: %s", k.kind, pullsText(len(group)))
			r, err := b.bombRun(ctx, ar.rssLimit, ok[0], group, signer.PublicKeyPEM())
			if err != nil {
				return fmt.Errorf("%s: %w", k.kind, err)
			}
			br.runs = append(br.runs, r)
		}
	}
	return nil
}

func (b *bench) bombRun(ctx context.Context, limit int64, ok name.Digest, subjects []name.Digest, pub []byte) (bombRun, error) {
	r := bombRun{pulls: len(subjects)}
	pc, err := b.startAttacked(ctx, fmt.Sprintf("portcullis-bomb-%d", len(subjects)), b.direct.url(), pub)
	if err != nil {
		return r, err
	}
	defer pc.proc.Stop()
	// One allowed pull first, so the baseline includes a verification's
	// ordinary working set.
	if err := do(ctx, b.client, http.MethodGet, manifestURL(&pc.target, ok), http.StatusOK); err != nil {
		return r, fmt.Errorf("warm-up pull: %w", err)
	}
	pid := pc.proc.Pid()
	if r.before, err = b.observe(ctx, pc); err != nil {
		return r, err
	}
	if err := hostile.ResetPeak(pid); err != nil {
		return r, fmt.Errorf("VmHWM cannot be reset, so a bomb's peak cannot be told from earlier ones: %w", err)
	}
	wd := hostile.Watch(pid, 5*time.Millisecond, limit, pc.proc.KillNow)
	r.outcomes = make([]pullOutcome, len(subjects))
	var wg sync.WaitGroup
	for i, d := range subjects {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			r.outcomes[i] = pullOnce(ctx, manifestURL(&pc.target, d))
		}()
	}
	wg.Wait()
	r.polledPeak, r.killed = wd.Stop()
	if !r.killed {
		if r.after, err = b.observe(ctx, pc); err != nil {
			return r, err
		}
	}
	return r, nil
}

// pullOnce GETs a manifest with its own client deadline and records the
// status, the time to the full answer and the start of an error body.
func pullOnce(ctx context.Context, url string) pullOutcome {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return pullOutcome{msg: err.Error()}
	}
	req.Header.Set("Accept", manifestAccept)
	t0 := time.Now()
	resp, err := attackTransport.RoundTrip(req)
	if err != nil {
		return pullOutcome{latency: time.Since(t0), msg: hostile.ConnErrorKind(err) + ": " + err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	o := pullOutcome{status: resp.StatusCode, latency: time.Since(t0)}
	if resp.StatusCode != http.StatusOK {
		if txt, err := envelopeText(body); err == nil {
			o.msg = txt
		} else {
			o.msg = string(body)
		}
	}
	return o
}

// flood runs a Portcullis whose only upstream is a tarpit, so every
// verification a request starts waits until something cancels it; the
// clients abandon their requests after a short time.
func (b *bench) flood(ctx context.Context, az attackSizes, pub []byte) (*floodOutcome, error) {
	tp, err := hostile.StartTarpit()
	if err != nil {
		return nil, err
	}
	teardown.Add(tp.Close)
	defer tp.Close()
	pc, err := b.startAttacked(ctx, "portcullis-flood", tp.URL, pub)
	if err != nil {
		return nil, err
	}
	defer pc.proc.Stop()
	fo := &floodOutcome{n: az.floodN, conc: az.floodConc, abandon: az.floodAbandon, settleLimit: az.settle}
	if fo.before, err = b.observe(ctx, pc); err != nil {
		return nil, err
	}
	fo.peak = fo.before
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer teardown.Guard()
		defer close(sampled)
		for {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if s, err := b.observe(sctx, pc); err == nil {
				fo.peak.RSS = max(fo.peak.RSS, s.RSS)
				fo.peak.FDs = max(fo.peak.FDs, s.FDs)
				fo.peak.Threads = max(fo.peak.Threads, s.Threads)
				fo.peak.Goroutines = max(fo.peak.Goroutines, s.Goroutines)
			}
			cancel()
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	fo.res = hostile.Flood(ctx, pc.url(), "bench/flood", "", az.floodN, az.floodConc, az.floodAbandon)
	close(stop)
	<-sampled
	fo.heldPeak = tp.Peak()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(5 * time.Second):
	}
	fo.held5 = tp.Held()
	if fo.after5, err = b.observe(ctx, pc); err != nil {
		return nil, err
	}
	fo.settled, fo.settledIn, fo.settledOK = hostile.Settle(ctx, 500*time.Millisecond, az.settle,
		func() (hostile.Stats, error) { return b.observe(ctx, pc) },
		func(s hostile.Stats) bool { return backTo(fo.before, s) })
	fo.upstreamTotal = tp.Total()
	// Whatever the flood left behind, a new client must still be served.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(pctx, http.MethodGet, pc.url()+"/v2/", nil)
	if resp, err := attackTransport.RoundTrip(req); err != nil {
		fo.probeStatus = hostile.ConnErrorKind(err)
	} else {
		resp.Body.Close()
		fo.probeStatus = strconv.Itoa(resp.StatusCode)
	}
	return fo, nil
}

// backTo reports whether s's goroutines and descriptors are back within
// settledWithin of base (plus a small constant for the observation's own
// connections).
func backTo(base, s hostile.Stats) bool {
	// Unknown goroutines (the scrape failed) never count as settled.
	g := s.Goroutines >= 0 && s.Goroutines <= base.Goroutines*(1+settledWithin)+settledGoroutines
	f := float64(s.FDs) <= float64(base.FDs)*(1+settledWithin)+settledFDs
	return g && f
}

// stall has clients ask a fresh Portcullis for an allowed blob and never
// read, and measures what the blocked streams hold.
func (b *bench) stall(ctx context.Context, az attackSizes, signer *fixtures.KeySigner) (*stallOutcome, error) {
	l, d, err := bigImage(ctx, b.dir, b.direct.host, "bench/stall", az.stallMiB, 3, signer)
	if err != nil {
		return nil, err
	}
	pc, err := b.startAttacked(ctx, "portcullis-stall", b.direct.url(), signer.PublicKeyPEM())
	if err != nil {
		return nil, err
	}
	defer pc.proc.Stop()
	if err := do(ctx, b.client, http.MethodGet, manifestURL(&pc.target, d), http.StatusOK); err != nil {
		return nil, fmt.Errorf("allow the stall image: %w", err)
	}
	repo := d.Context().RepositoryStr()
	// One complete pull first: the streaming path's buffers are part of
	// the baseline, not of the stalls.
	if _, err := pullBlob(ctx, b.client, blobURL(&pc.target, repo, l), l.size); err != nil {
		return nil, err
	}
	so := &stallOutcome{n: az.stalls, blobMiB: az.stallMiB}
	pid := pc.proc.Pid()
	if so.before, err = b.observe(ctx, pc); err != nil {
		return nil, err
	}
	if err := hostile.ResetPeak(pid); err != nil {
		return nil, fmt.Errorf("VmHWM cannot be reset: %w", err)
	}
	st, err := hostile.OpenStalls(ctx, pc.host, "/v2/"+repo+"/blobs/"+l.digest.String(), az.stalls, 4<<10)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	so.quiet = hostile.WaitQuiet(ctx, pid, 2*time.Second, 1<<20, 30*time.Second)
	if so.after, err = b.observe(ctx, pc); err != nil {
		return nil, err
	}
	so.statuses = st.Statuses(2 * time.Second)
	st.Close()
	so.released, so.releasedIn, so.releasedOK = hostile.Settle(ctx, 500*time.Millisecond, az.settle,
		func() (hostile.Stats, error) { return b.observe(ctx, pc) },
		func(s hostile.Stats) bool { return backTo(so.before, s) })
	return so, nil
}

// markdown renders the attack sections of the report.
func (ar *attackResults) markdown() string {
	var sb strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	for _, br := range ar.bombs {
		p("### %s", capitalize(br.kind))
		p("")
		stored := fmt.Sprintf("Evidence as stored: %d referrers, %s each, %s in all per subject", br.info.Referrers, hostile.MiB(br.info.ItemBytes), hostile.MiB(br.info.TotalBytes))
		if br.info.Referrers == 0 {
			stored = fmt.Sprintf("Manifest as stored: %d bytes", br.info.ManifestBytes)
		}
		p("%s. %s (%d subjects pushed in %s). Each row is a fresh Portcullis (default limits) that first verified one ordinary signed image; growth = VmHWM after the pulls − VmRSS before them (VmHWM reset with `clear_refs` in between).", br.shape, stored, br.subjects, br.pushed.Round(time.Second))
		p("")
		p("| pulls at once | VmRSS before | VmHWM after | growth | growth per pull | answers | answer times | first reason |")
		p("|---:|---:|---:|---:|---:|---|---:|---|")
		for _, r := range br.runs {
			hwm := hostile.MiB(r.after.HWM)
			if r.killed {
				hwm = fmt.Sprintf("> %s (killed)", hostile.MiB(ar.rssLimit))
			}
			p("| %d | %s | %s | %s | %s | %s | %s | %s |", r.pulls, hostile.MiB(r.before.RSS), hwm, hostile.MiB(r.growth()),
				hostile.MiB(r.growth()/int64(max(r.pulls, 1))), answers(r.outcomes), answerTimes(r.outcomes), firstReason(r.outcomes))
		}
		p("")
	}
	if fo := ar.flood; fo != nil {
		p("### Flood: %d requests for random digests, abandoned after %s", fo.n, fo.abandon)
		p("")
		p("A fresh Portcullis whose upstream is a tarpit that holds every request but the ping open until its caller leaves. %d clients, a new connection per request, each closed after %s without an answer. Goroutines from the proxy's `go_goroutines`, descriptors from /proc/<pid>/fd.", fo.conc, fo.abandon)
		p("")
		p("| | goroutines | open fds | threads | VmRSS | upstream requests held |")
		p("|---|---:|---:|---:|---:|---:|")
		p("| before | %s | %d | %d | %s | 0 |", goroutines(fo.before), fo.before.FDs, fo.before.Threads, hostile.MiB(fo.before.RSS))
		p("| peak during the flood | %s | %d | %d | %s | %d |", goroutines(fo.peak), fo.peak.FDs, fo.peak.Threads, hostile.MiB(fo.peak.RSS), fo.heldPeak)
		p("| 5 s after the clients left | %s | %d | %d | %s | %d |", goroutines(fo.after5), fo.after5.FDs, fo.after5.Threads, hostile.MiB(fo.after5.RSS), fo.held5)
		settled := fmt.Sprintf("settled after %s", fo.settledIn.Round(100*time.Millisecond))
		if !fo.settledOK {
			settled = fmt.Sprintf("not settled within %s", fo.settleLimit)
		}
		p("| %s | %s | %d | %d | %s | – |", settled, goroutines(fo.settled), fo.settled.FDs, fo.settled.Threads, hostile.MiB(fo.settled.RSS))
		p("")
		p("Client side: %d abandoned, answered in time: %s (%s). The tarpit received %d requests. A new `GET /v2/` afterwards: %s.", fo.res.Abandoned, fo.res.Summary(), fo.res.Elapsed.Round(time.Millisecond), fo.upstreamTotal, fo.probeStatus)
		p("")
	}
	if so := ar.stall; so != nil {
		p("### Stall: %d clients that never read an allowed %d MiB blob", so.n, so.blobMiB)
		p("")
		p("A fresh Portcullis, the image allowed and the blob pulled once in full; then %d connections each send `GET …/blobs/<digest>` with a 4 KiB receive buffer and read nothing. Measured once the proxy's RSS has stopped growing (%s).", so.n, quietText(so.quiet))
		p("")
		p("| | goroutines | open fds | VmRSS | VmHWM |")
		p("|---|---:|---:|---:|---:|")
		p("| before | %s | %d | %s | %s |", goroutines(so.before), so.before.FDs, hostile.MiB(so.before.RSS), hostile.MiB(so.before.HWM))
		p("| %d stalled | %s | %d | %s | %s |", so.n, goroutines(so.after), so.after.FDs, hostile.MiB(so.after.RSS), hostile.MiB(so.after.HWM))
		rel := fmt.Sprintf("after closing them (%s)", so.releasedIn.Round(100*time.Millisecond))
		if !so.releasedOK {
			rel = "after closing them (not settled)"
		}
		p("| %s | %s | %d | %s | %s |", rel, goroutines(so.released), so.released.FDs, hostile.MiB(so.released.RSS), hostile.MiB(so.released.HWM))
		p("")
		answered := ""
		if n := so.statuses["200"]; n > 0 && n < so.n {
			answered = fmt.Sprintf(" (%.1f KiB per connection that had been answered 200)", float64(so.after.HWM-so.before.RSS)/float64(n)/1024)
		}
		p("Growth %s in all, %.1f KiB per stalled connection%s. Status lines the stalled clients had been sent, read after the measurement: %s.", hostile.MiB(so.after.HWM-so.before.RSS), float64(so.perConn())/1024, answered, harness.CountsText(so.statuses))
		p("")
	}
	return sb.String()
}

// goals are the attack targets for the Targets table.
func (ar *attackResults) goals() []goal {
	if ar == nil {
		return nil
	}
	var gs []goal
	for _, br := range ar.bombs {
		for _, r := range br.runs {
			if r.pulls == 1 {
				gs = append(gs, goal{name: br.kind + ", " + pullsText(1) + ": RSS growth", measured: fmtMiB(r.growth()), want: "< 64 MiB", pass: !r.killed && r.growth() < bombGrowthOne})
			} else {
				gs = append(gs,
					goal{name: fmt.Sprintf("%s, %s: RSS growth", br.kind, pullsText(r.pulls)), measured: fmtMiB(r.growth()), want: "< 256 MiB", pass: !r.killed && r.growth() < bombGrowthThree},
					goal{name: fmt.Sprintf("%s, %s: RSS growth per verification", br.kind, pullsText(r.pulls)), measured: fmtMiB(r.growth() / int64(r.pulls)), want: "< 64 MiB", pass: !r.killed && r.growth()/int64(r.pulls) < bombGrowthOne})
			}
			gs = append(gs, goal{name: fmt.Sprintf("%s, %s: each denied (403)", br.kind, pullsText(r.pulls)), measured: answers(r.outcomes) + ", slowest " + harness.Duration(r.slowest()), want: "403 in < 2 s", pass: r.allDeniedWithin(bombDenyWithin)})
		}
	}
	if fo := ar.flood; fo != nil {
		gs = append(gs,
			goal{name: fmt.Sprintf("flood of %d: upstream requests still held 5 s after the clients left", fo.n), measured: strconv.FormatInt(fo.held5, 10), want: "0", pass: fo.held5 == 0},
			goal{name: fmt.Sprintf("flood of %d: goroutines and fds 5 s after, vs before", fo.n), measured: fmt.Sprintf("%s / %d vs %s / %d", goroutines(fo.after5), fo.after5.FDs, goroutines(fo.before), fo.before.FDs), want: "within 10 %", pass: backTo(fo.before, fo.after5)},
			goal{name: fmt.Sprintf("flood of %d: a new client served afterwards", fo.n), measured: fo.probeStatus, want: "200", pass: fo.probeStatus == "200"},
		)
	}
	if so := ar.stall; so != nil {
		gs = append(gs, goal{name: fmt.Sprintf("%d stalled %d MiB blob streams: RSS growth per connection", so.n, so.blobMiB), measured: fmt.Sprintf("%.1f KiB", float64(so.perConn())/1024), want: "< 128 KiB", pass: so.perConn() < stallPerConnTarget && so.statuses["200"] > 0})
	}
	return gs
}

func pullsText(n int) string {
	if n == 1 {
		return "1 pull"
	}
	return fmt.Sprintf("%d pulls at once", n)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func goroutines(s hostile.Stats) string {
	if s.Goroutines < 0 {
		return "–"
	}
	return strconv.FormatFloat(s.Goroutines, 'f', 0, 64)
}

func quietText(q bool) string {
	if q {
		return "no growth above 1 MiB over 2 s"
	}
	return "still growing after 30 s; measured then"
}

// answers counts outcomes by status, e.g. "403 ×3".
func answers(os []pullOutcome) string {
	m := map[string]int{}
	for _, o := range os {
		k := "no answer"
		if o.status != 0 {
			k = strconv.Itoa(o.status)
		}
		m[k]++
	}
	return harness.CountsText(m)
}

// answerTimes lists each pull's time to its full answer.
func answerTimes(os []pullOutcome) string {
	parts := make([]string, len(os))
	for i, o := range os {
		parts[i] = harness.Duration(o.latency)
	}
	return strings.Join(parts, ", ")
}

// firstReason is the start of the first answer's message, for the table.
func firstReason(os []pullOutcome) string {
	for _, o := range os {
		if o.msg != "" {
			s := strings.Join(strings.Fields(o.msg), " ")
			if len(s) > 140 {
				s = s[:140] + "…"
			}
			return "`" + strings.ReplaceAll(s, "|", "\\|") + "`"
		}
	}
	return "–"
}
