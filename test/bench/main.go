package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// sizes are the request counts and content sizes of one run.
type sizes struct {
	small      int         // distinct signed small images (cold GETs)
	getDigest  map[int]int // concurrency → requests
	headTag    map[int]int // concurrency → requests
	blobRuns   int         // pulls per target of the throughput blob
	bigMiB     int64       // throughput blob
	hugeMiB    int64       // RSS blob; 0 skips it
	herd       int         // simultaneous clients
	verifyRuns int         // in-process verifications per kind
	verdicts   int         // cached verdicts for the heap measurement
	// lineageChains is the number of distinct depth-3 chains (cold GETs of
	// their roots); lineageCached the GETs of verified roots.
	lineageChains int
	lineageCached int
}

var (
	fullSizes = sizes{
		small: 200, getDigest: map[int]int{1: 3000, 16: 20000, 256: 20000}, headTag: map[int]int{1: 2000, 16: 10000},
		blobRuns: 3, bigMiB: 256, hugeMiB: 1024, herd: 1000, verifyRuns: 2000, verdicts: 100_000,
		lineageChains: 20, lineageCached: 2000,
	}
	quickSizes = sizes{
		small: 50, getDigest: map[int]int{1: 500, 16: 2000, 256: 4000}, headTag: map[int]int{1: 300, 16: 1000},
		blobRuns: 1, bigMiB: 256, hugeMiB: 0, herd: 1000, verifyRuns: 200, verdicts: 100_000,
		lineageChains: 8, lineageCached: 300,
	}
	concurrencies = []int{1, 16, 256}
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == floorCommand {
		os.Exit(serveFloor(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == relayCommand {
		os.Exit(serveRelay(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == bytesCommand {
		os.Exit(serveBytes(os.Args[2:]))
	}
	quick := flag.Bool("quick", false, "smaller request counts; skip the 1 GiB blob")
	out := flag.String("out", "", "also write the markdown report to `FILE`")
	pcBin := flag.String("portcullis", "", "portcullis binary to run (default: build ./cmd/portcullis)")
	only := flag.String("only", "", "run only these comma-separated `phases`: "+strings.Join(phaseNames, ","))
	rssLimitMiB := flag.Int64("rss-limit", 4096, "kill a Portcullis under attack whose RSS passes this many `MiB`")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	sel, err := parsePhases(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	ctx, cancel := teardown.OnSignal("bench")
	defer teardown.Guard()

	sz := fullSizes
	if *quick {
		sz = quickSizes
	}
	res, err := run(ctx, sz, *quick, *pcBin, sel, *rssLimitMiB<<20)
	teardown.Run()
	cancel()
	if res != nil {
		res.goals = evaluate(res)
		report := res.markdown()
		fmt.Print(report)
		if *out != "" {
			if werr := os.WriteFile(*out, []byte(report), 0o644); werr != nil && err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}

// bench holds what every phase needs: the client, the sizes, the running
// targets and the results being filled in.
type bench struct {
	client *http.Client
	sz     sizes
	res    *results
	dir    string
	pcBin  string
	pub    []byte // the bench key's PEM, the only trust Portcullis gets

	direct    *target
	distProxy *target // nil without docker-registry
	// relay is a bare Go reverse proxy in front of the direct registry that
	// checks nothing: the cost of one extra hop, which any proxy that must
	// ask the upstream pays. It doubles as the herd's request counter.
	relay      *target
	relaySpy   *spy
	pc         *portcullis
	sel        phaseSet
	rssLimit   int64 // bytes; the attack phases' watchdog limit
	small      []name.Digest
	herdDigest name.Digest
	big, huge  *fileLayer
	bigDigest  name.Digest
	hugeDigest name.Digest
}

// run performs every measurement. It returns what it measured so far even
// when a later phase fails, so a partial report is still printed.
func run(ctx context.Context, sz sizes, quick bool, pcBin string, sel phaseSet, rssLimit int64) (*results, error) {
	res := &results{started: time.Now(), quick: quick, env: environment()}
	defer func() { res.elapsed = time.Since(res.started) }()
	if sel != nil {
		res.notes = append(res.notes, "phases: "+sel.String())
	}
	b := &bench{client: newClient(), sz: sz, res: res, sel: sel, rssLimit: rssLimit}
	if err := b.setup(ctx, pcBin); err != nil {
		return nil, err
	}
	if sel.has(phaseManifests) {
		if err := b.manifests(ctx); err != nil {
			return res, err
		}
	}
	if sel.has(phaseBlobs) {
		if err := b.blobs(ctx); err != nil {
			return res, err
		}
	}
	var err error
	if b.pc != nil {
		if res.pcMem, err = hostile.ReadStats(b.pc.proc.Pid()); err != nil {
			return res, err
		}
		b.pc.proc.Stop()
	}

	if sel.has(phaseHerd) {
		logf("herd of %d clients", sz.herd)
		if err := b.herd(ctx); err != nil {
			return res, err
		}
	}

	if sel.has(phaseLineage) {
		if err := b.lineage(ctx); err != nil {
			return res, err
		}
	}

	if sel.has(phaseShared) {
		if err := b.shared(ctx); err != nil {
			return res, err
		}
	}

	if sel.has(phaseBlobHerd) {
		if err := b.blobHerd(ctx); err != nil {
			return res, err
		}
	}

	if sel.has(phaseInProcess) {
		logf("in-process verification and verdict cache")
		if res.verify, err = measureVerify(ctx, sz.verifyRuns); err != nil {
			return res, fmt.Errorf("in-process verification: %w", err)
		}
		res.verdictN = sz.verdicts
		if res.verdictHeap, err = measureVerdictHeap(sz.verdicts); err != nil {
			return res, err
		}
	}

	if err := b.attacks(ctx); err != nil {
		return res, err
	}
	return res, nil
}

// setup builds Portcullis, starts the upstreams, pushes and signs the
// content and starts the proxies.
func (b *bench) setup(ctx context.Context, pcBin string) error {
	var err error
	if b.dir, err = os.MkdirTemp("", "portcullis-bench-"); err != nil {
		return err
	}
	dir := b.dir
	teardown.Add(func() { _ = os.RemoveAll(dir) })

	if pcBin == "" {
		logf("building ./cmd/portcullis")
		if pcBin, err = harness.BuildPortcullis(ctx, dir); err != nil {
			return err
		}
	} else if pcBin, err = filepath.Abs(pcBin); err != nil {
		return err
	}
	b.pcBin = pcBin

	distBin, lookErr := exec.LookPath(dockerRegistryBin)
	if lookErr == nil {
		if b.direct, err = startDistribution(ctx, b.client, distBin, dir, "direct", ""); err != nil {
			return err
		}
		if v, err := exec.CommandContext(ctx, distBin, "--version").Output(); err == nil {
			b.res.env = append(b.res.env, "direct upstream: "+strings.TrimSpace(string(v)))
		}
	} else {
		if b.direct, err = startInProcessRegistry(dir); err != nil {
			return err
		}
		b.res.env = append(b.res.env, "direct upstream: go-containerregistry in-process registry (disk blobs)")
		b.res.notes = append(b.res.notes, "distribution proxy: skipped (docker-registry not installed)")
	}

	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return err
	}
	b.pub = signer.PublicKeyPEM()
	// Content, peers and the shared Portcullis only for the phases that
	// use them; the lineage and attack phases push and start their own.
	sel := b.sel
	if sel.has(phaseManifests) {
		logf("pushing %d small signed images", b.sz.small)
		if b.small, err = pushSignedSmall(ctx, b.direct.host, "bench/small", b.sz.small, signer); err != nil {
			return err
		}
	}
	if sel.has(phaseHerd) {
		herd, err := pushSignedSmall(ctx, b.direct.host, "bench/herd", 1, signer)
		if err != nil {
			return err
		}
		b.herdDigest = herd[0]
	}
	if sel.has(phaseBlobs) {
		logf("writing and pushing the %d MiB layer", b.sz.bigMiB)
		if b.big, b.bigDigest, err = bigImage(ctx, dir, b.direct.host, "bench/big", b.sz.bigMiB, 1, signer); err != nil {
			return err
		}
	}
	if sel.has(phaseBlobs) && b.sz.hugeMiB > 0 {
		logf("writing and pushing the %d MiB layer", b.sz.hugeMiB)
		if b.huge, b.hugeDigest, err = bigImage(ctx, dir, b.direct.host, "bench/huge", b.sz.hugeMiB, 2, signer); err != nil {
			return err
		}
	}

	// distribution's proxy mode panics if its remote is down, so it starts
	// only now that the direct registry answers.
	if lookErr == nil && sel.has(phaseManifests, phaseBlobs) {
		if b.distProxy, err = startDistribution(ctx, b.client, distBin, dir, "distribution-proxy", b.direct.url()); err != nil {
			return err
		}
	}
	if sel.has(phaseManifests, phaseBlobs, phaseHerd) {
		if b.relaySpy, err = startSpy(b.direct.url()); err != nil {
			return err
		}
		b.relay = &target{name: "go-relay (no checks)", host: b.relaySpy.host}
	}
	if !sel.has(phaseManifests, phaseBlobs) {
		return nil
	}
	logf("starting portcullis")
	b.pc, err = startPortcullis(ctx, b.client, pcBin, dir, "portcullis", b.direct.url(), b.pub)
	return err
}

// bigImage writes a random layer of mib MiB and pushes it as a signed
// one-layer image.
func bigImage(ctx context.Context, dir, host, repo string, mib int64, seed byte, s fixtures.Signer) (*fileLayer, name.Digest, error) {
	l, err := writeRandomFile(filepath.Join(dir, fmt.Sprintf("layer-%d.bin", mib)), mib<<20, seed)
	if err != nil {
		return nil, name.Digest{}, err
	}
	ref, err := name.ParseReference(host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		return nil, name.Digest{}, err
	}
	d, err := pushLayerImage(ctx, ref, l, s)
	return l, d, err
}

func manifestURL(t *target, d name.Digest) string {
	return t.url() + "/v2/" + d.Context().RepositoryStr() + "/manifests/" + d.DigestStr()
}

func (b *bench) manifests(ctx context.Context) error {
	client, res, sz, direct, small := b.client, b.res, b.sz, b.direct, b.small
	urls := func(t *target) []string {
		u := make([]string, len(small))
		for i, d := range small {
			u[i] = manifestURL(t, d)
		}
		return u
	}
	targets := []*target{direct}
	if b.distProxy != nil {
		targets = append(targets, b.distProxy)
	}
	targets = append(targets, &b.pc.target)

	// Cold: each digest fetched for the first time, one client. The direct
	// registry has no cold state; its first fetch is the reference.
	logf("cold manifest GETs")
	var directCold cell
	for _, t := range targets {
		c := t.measure(func() cell {
			return runLoad(ctx, client, probe{method: http.MethodGet, urls: urls(t), want: http.StatusOK}, len(small), 1)
		})
		if t == direct {
			directCold = c
		}
		res.cold = append(res.cold, row{target: t.name + " (first fetch)", c: c, ratio: ratio(c.rps, directCold.rps)})
		if !c.ok() {
			return fmt.Errorf("cold GET through %s: %d errors, first: %s", t.name, c.errors, c.firstErr)
		}
	}

	// Warm: every digest has been pulled once through each proxy.
	for _, conc := range concurrencies {
		n := sz.getDigest[conc]
		logf("warm manifest GETs, %s", clients(conc))
		var base cell
		for _, t := range targets {
			p := probe{method: http.MethodGet, urls: urls(t), want: http.StatusOK}
			runLoad(ctx, client, p, min(n, 500), conc) // connections and caches up
			c := t.measure(func() cell { return runLoad(ctx, client, p, n, conc) })
			if t == direct {
				base = c
			}
			name := t.name
			if t != direct {
				name += " (warm)"
			}
			res.getDigest = append(res.getDigest, row{target: name, c: c, ratio: ratio(c.rps, base.rps)})
		}
	}

	floor, err := startFloor(ctx, client, b.dir, direct, small)
	if err != nil {
		return err
	}
	if err := b.compareFloor(ctx, floor, urls); err != nil {
		return err
	}
	floor.proc.Stop()

	// HEAD by tag: resolved at the upstream on every request. The bare
	// relay shows what the extra hop alone costs.
	tagURL := func(t *target) []string {
		return []string{t.url() + "/v2/bench/small/manifests/img-0"}
	}
	headTargets := slices.Insert(slices.Clone(targets), len(targets)-1, b.relay)
	// The same relay as a process of its own, like Portcullis: the
	// in-process one shares the client's scheduler, which no proxy can.
	relayProc, err := startRelay(ctx, client, b.dir, direct.url(), false)
	if err != nil {
		return err
	}
	defer relayProc.proc.Stop()
	headTargets = slices.Insert(headTargets, len(headTargets)-1, relayProc)
	for _, conc := range []int{1, 16} {
		n := sz.headTag[conc]
		logf("HEAD by tag, %s", clients(conc))
		var base cell
		for _, t := range headTargets {
			p := probe{method: http.MethodHead, urls: tagURL(t), want: http.StatusOK}
			runLoad(ctx, client, p, min(n, 200), conc)
			c := t.measure(func() cell { return runLoad(ctx, client, p, n, conc) })
			if t == direct {
				base = c
			}
			res.headTag = append(res.headTag, row{target: t.name, c: c, ratio: ratio(float64(c.p50), float64(base.p50))})
		}
	}
	return nil
}

func clients(n int) string {
	if n == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients", n)
}

func ratio(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return a / b
}

func blobURL(t *target, repo string, l *fileLayer) string {
	return t.url() + "/v2/" + repo + "/blobs/" + l.digest.String()
}

func (b *bench) blobs(ctx context.Context) error {
	client, res, sz, distProxy, pc := b.client, b.res, b.sz, b.distProxy, b.pc
	big, bigDigest, huge, hugeDigest := b.big, b.bigDigest, b.huge, b.hugeDigest
	res.blobMiB = sz.bigMiB
	// Blob gating: Portcullis serves the layer only once a manifest that
	// references it has been allowed in the repository.
	if err := do(ctx, client, http.MethodGet, manifestURL(&pc.target, bigDigest), http.StatusOK); err != nil {
		return fmt.Errorf("allow the big image: %w", err)
	}
	repo := bigDigest.Context().RepositoryStr()
	if distProxy != nil {
		// The first pull through distribution fills its cache; it is
		// reported separately from the warm pulls.
		if err := do(ctx, client, http.MethodGet, manifestURL(distProxy, bigDigest), http.StatusOK); err != nil {
			return err
		}
		logf("blob: distribution proxy first pull")
		v, err := pullBlob(ctx, client, blobURL(distProxy, repo, big), big.size)
		if err != nil {
			return err
		}
		res.blobs = append(res.blobs, blobRow{target: distProxy.name, note: "first pull, cold", mode: clientDiscard, mbps: v, runs: []float64{v}})
	}
	if err := b.blobThroughput(ctx, repo); err != nil {
		return err
	}

	// Memory while streaming: the huge blob if there is one, else the big.
	l, d := huge, hugeDigest
	if l == nil {
		l, d = big, bigDigest
	}
	if l != big {
		if err := do(ctx, client, http.MethodGet, manifestURL(&pc.target, d), http.StatusOK); err != nil {
			return fmt.Errorf("allow the huge image: %w", err)
		}
	}
	pid := pc.proc.Pid()
	r := &rssResult{blobMiB: l.size >> 20}
	var err error
	if r.earlier, err = hostile.ReadStats(pid); err != nil {
		return err
	}
	r.peakWasReset = hostile.ResetPeak(pid) == nil
	if r.before, err = hostile.ReadStats(pid); err != nil {
		return err
	}
	logf("blob: %d MiB through portcullis, watching its memory", r.blobMiB)
	// VmHWM is the authoritative peak; sampling VmRSS meanwhile is a cross
	// check that does not depend on clear_refs.
	stopSampling := make(chan struct{})
	sampled := make(chan int64, 1)
	go func() {
		defer teardown.Guard()
		var peak int64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if m, err := hostile.ReadStats(pid); err == nil {
				peak = max(peak, m.RSS)
			}
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-tick.C:
			}
		}
	}()
	r.mbps, err = pullBlob(ctx, client, blobURL(&pc.target, d.Context().RepositoryStr(), l), l.size)
	close(stopSampling)
	r.sampledPeak = <-sampled
	if err != nil {
		return err
	}
	if r.after, err = hostile.ReadStats(pid); err != nil {
		return err
	}
	res.rss = r
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// herd runs a fresh Portcullis behind the counting relay, so the first
// verification of the herd digest is the only one it ever does.
func (b *bench) herd(ctx context.Context) error {
	client, res, sz, s, d := b.client, b.res, b.sz, b.relaySpy, b.herdDigest
	pc, err := startPortcullis(ctx, client, b.pcBin, b.dir, "portcullis-herd", b.relay.url(), b.pub)
	if err != nil {
		return err
	}
	defer pc.proc.Stop()
	h, err := runHerd(ctx, client, pc, s, manifestURL(&pc.target, d), sz.herd)
	if err != nil {
		return err
	}
	// With the digest verified, what does one HEAD by tag cost upstream?
	const heads = 20
	tagURL := pc.url() + "/v2/" + d.Context().RepositoryStr() + "/manifests/img-0"
	if h.perHeadTag, err = upstreamPerRequest(ctx, client, s, http.MethodHead, tagURL, heads); err != nil {
		return err
	}
	h.headTagN = heads
	res.herd = &h
	return nil
}

// evaluate compares the measurements with the project's targets.
func evaluate(r *results) []goal {
	var gs []goal
	find := func(rows []row, prefix string, conc int) (row, bool) {
		for _, rw := range rows {
			if strings.HasPrefix(rw.target, prefix) && rw.c.concurrency == conc {
				return rw, true
			}
		}
		return row{}, false
	}
	for _, conc := range concurrencies {
		if pw, ok := find(r.getDigest, "portcullis", conc); ok {
			gs = append(gs, goal{
				name:     fmt.Sprintf("warm manifest GET by digest, %s: req/s vs direct", clients(conc)),
				measured: fmtRatio(pw.ratio), want: "≥ 5×", pass: pw.c.ok() && pw.ratio >= 5,
			})
		}
	}
	if pw, ok := find(r.headTag, "portcullis", 1); ok {
		gs = append(gs, goal{
			name:     "warm HEAD by tag p50 vs direct (1 client)",
			measured: fmtRatio(pw.ratio), want: "≤ 1.10×", pass: pw.c.ok() && pw.ratio <= 1.10,
		})
		if dp, ok := find(r.headTag, "distribution", 1); ok {
			adv := ratio(float64(dp.c.p50), float64(pw.c.p50))
			gs = append(gs, goal{
				name:     "warm HEAD by tag p50: distribution proxy ÷ Portcullis (1 client)",
				measured: fmtRatio(adv), want: "≥ 5×", pass: pw.c.ok() && adv >= 5,
			})
		}
	}
	gs = append(gs, blobGoals(r)...)
	if r.rss != nil {
		want := "< 64 MiB"
		gs = append(gs, goal{
			name:     fmt.Sprintf("Portcullis peak RSS growth streaming %d MiB", r.rss.blobMiB),
			measured: fmtMiB(r.rss.growth()), want: want, pass: r.rss.growth() < 64<<20,
		})
	}
	if h := r.herd; h != nil {
		gs = append(gs, goal{
			name:     fmt.Sprintf("herd of %d: verifications, most fetches of one evidence location", h.clients),
			measured: fmt.Sprintf("%.0f, %d", h.verifications, h.maxPerLoc), want: "1, ≤ 1", pass: h.pass(),
		})
	}
	for _, v := range r.verify {
		if strings.HasPrefix(v.kind, "key,") {
			gs = append(gs, goal{
				name:     "key verification CPU per subject",
				measured: harness.Duration(v.cpu), want: "≤ 2 ms", pass: v.cpu <= 2*time.Millisecond,
			})
		}
	}
	if r.verdictN > 0 {
		gs = append(gs, goal{
			name:     fmt.Sprintf("heap for %d cached verdicts", r.verdictN),
			measured: fmtMiB(r.verdictHeap), want: "≤ 32 MiB", pass: r.verdictHeap <= 32<<20,
		})
	}
	gs = append(gs, warmGoals(r)...)
	gs = append(gs, sharedGoals(r)...)
	return append(gs, r.attacks.goals()...)
}
