package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// row is one measured cell for one target; ratio compares it with the
// direct registry's cell of the same shape.
type row struct {
	target string
	c      cell
	ratio  float64 // target/direct; 0 when there is no direct cell
}

type blobRow struct {
	target string
	note   string
	mode   string  // client mode: clientDiscard or clientSHA256
	mbps   float64 // median of the runs
	runs   []float64
	ratio  float64 // vs direct with the same client
	// vsRelay and vsFloor compare with go-relay (same client) and one
	// core's SHA-256.
	vsRelay, vsFloor float64
	// cpuPerGiB is the serving process's CPU per GiB streamed, sysPerGiB
	// its system part; 0 when it runs in process. chainPerGiB adds the
	// client's and the upstream's.
	cpuPerGiB, sysPerGiB, chainPerGiB time.Duration
}

type rssResult struct {
	blobMiB      int64
	earlier      hostile.Stats // before VmHWM was reset
	before       hostile.Stats
	sampledPeak  int64 // largest VmRSS seen while polling during the pull
	after        hostile.Stats
	peakWasReset bool
	mbps         float64
}

func (r rssResult) growth() int64 { return r.after.HWM - r.before.RSS }

type goal struct {
	name     string
	measured string
	want     string
	pass     bool
}

type results struct {
	started   time.Time
	elapsed   time.Duration
	quick     bool
	env       []string
	notes     []string
	getDigest []row
	floor     []floorRow // warm GET by digest, Portcullis against the floor
	cold      []row
	headTag   []row
	blobs     []blobRow
	blobMiB   int64
	// hugeBlobs are the warm pulls of the full bench's 1 GiB layer.
	hugeBlobs   []blobRow
	hugeMiB     int64
	shaFloor    []float64 // MiB/s of SHA-256 on one core, per blob round
	shaFloorCPU []float64 // the same per second of the thread's CPU
	rss         *rssResult
	herd        *herdResult
	shared      *sharedResult
	lineage     *lineageResult
	verify      []verifyCost
	verdictHeap int64
	verdictN    int
	pcMem       hostile.Stats
	attacks     *attackResults
	goals       []goal
}

func environment() []string {
	var env []string
	env = append(env, fmt.Sprintf("CPU: %d × %s", runtime.NumCPU(), cpuModel()))
	if mem := memTotal(); mem != "" {
		env = append(env, "memory: "+mem)
	}
	env = append(env, "Go: "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH)
	// Everything shares the same cores; a busy machine shows in every
	// number, so the load at start is part of the record.
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			env = append(env, "load average at start: "+strings.Join(f[:3], " "))
		}
	}
	return env
}

func cpuModel() string {
	return procField("/proc/cpuinfo", "model name")
}

func memTotal() string {
	v := procField("/proc/meminfo", "MemTotal")
	var kb int64
	if _, err := fmt.Sscanf(v, "%d kB", &kb); err != nil {
		return v
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func fmtRatio(r float64) string {
	if r == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", r)
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// markdown renders the whole report; the same text is printed and, with
// -out, written to a file.
func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	mode := "full"
	if r.quick {
		mode = "quick"
	}
	p("### Run")
	p("")
	p("- date: %s (%s run, %s)", r.started.UTC().Format("2006-01-02 15:04 MST"), mode, r.elapsed.Round(time.Second))
	for _, e := range r.env {
		p("- %s", e)
	}
	for _, n := range r.notes {
		p("- %s", n)
	}
	p("")

	if len(r.cold)+len(r.getDigest) > 0 {
		p("### Manifest GET by digest")
		p("")
		p("Ratio: requests/s of the target ÷ requests/s of the direct registry at the same concurrency. Cold: the first GET of each of %d distinct signed digests, one client.", firstRequests(r.cold))
		p("")
		p("| target | clients | requests | errors | p50 | p99 | req/s | ratio | server CPU/req |")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, rw := range append(append([]row{}, r.cold...), r.getDigest...) {
			p("| %s | %d | %d | %d | %s | %s | %.0f | %s | %s |", rw.target, rw.c.concurrency, rw.c.requests, rw.c.errors,
				harness.Duration(rw.c.p50), harness.Duration(rw.c.p99), rw.c.rps, fmtRatio(rw.ratio), harness.Duration(rw.c.cpu))
		}
		p("")
		p("Server CPU/req is the user+system CPU of the serving process alone (from /proc/<pid>/stat, all threads), not of its upstream; it varies less than latency on a shared machine.")
		p("")
	}
	r.floorMarkdown(p)
	if len(r.headTag) > 0 {
		p("### Manifest HEAD by tag")
		p("")
		p("Ratio: p50 of the target ÷ p50 of the direct registry (lower is better). Tags are never cached by Portcullis (tag_ttl 0), so every HEAD costs one upstream HEAD.")
		p("")
		p("| target | clients | requests | errors | p50 | p99 | req/s | p50 ratio | server CPU/req |")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, rw := range r.headTag {
			p("| %s | %d | %d | %d | %s | %s | %.0f | %s | %s |", rw.target, rw.c.concurrency, rw.c.requests, rw.c.errors,
				harness.Duration(rw.c.p50), harness.Duration(rw.c.p99), rw.c.rps, fmtRatio(rw.ratio), harness.Duration(rw.c.cpu))
		}
		p("")
		p("go-relay is `net/http/httputil.ReverseProxy` in front of the direct registry, checking nothing: the cost of the extra hop alone, which any proxy that asks the upstream on every request pays. It runs inside the bench, so it has no server CPU of its own.")
		p("")
	}
	r.blobMarkdown(p)

	if r.rss != nil {
		p("### Portcullis memory while streaming a %d MiB blob", r.rss.blobMiB)
		p("")
		p("VmHWM was reset (`echo 5 > /proc/<pid>/clear_refs`) right before the pull; it was %s from the earlier phases.", fmtMiB(r.rss.earlier.HWM))
		p("")
		p("| VmRSS before | VmHWM after | peak growth | VmRSS max polled every 5 ms | throughput |")
		p("|---:|---:|---:|---:|---:|")
		p("| %s | %s | %s | %s | %.0f MB/s |", fmtMiB(r.rss.before.RSS), fmtMiB(r.rss.after.HWM), fmtMiB(r.rss.growth()),
			fmtMiB(r.rss.sampledPeak), r.rss.mbps)
		p("")
		if !r.rss.peakWasReset {
			p("VmHWM could not be reset before the pull (no write access to /proc/<pid>/clear_refs), so the peak may include earlier phases: the growth is an upper bound.")
			p("")
		}
	}
	if r.pcMem.RSS > 0 {
		p("Portcullis process after all phases: VmRSS %s, VmHWM %s.", fmtMiB(r.pcMem.RSS), fmtMiB(r.pcMem.HWM))
		p("")
	}

	if h := r.herd; h != nil {
		p("### Thundering herd: %d simultaneous GETs of one unverified digest", h.clients)
		p("")
		p("A fresh Portcullis whose upstream is a counting reverse proxy in front of the direct registry.")
		p("")
		p("| measurement | value |")
		p("|---|---:|")
		p("| clients served 200 | %d / %d |", h.served, h.clients)
		p("| verifications (portcullis_verifications_total) | %.0f |", h.verifications)
		for _, k := range h.upstream {
			p("| upstream %s | %d |", k.kind, k.count)
		}
		p("| most requests to one evidence location | %d (%s) |", h.maxPerLoc, h.maxLoc)
		for _, k := range h.perHeadTag {
			p("| then, per HEAD by tag of the verified digest: upstream %s | %.2f |", k.kind, float64(k.count)/float64(h.headTagN))
		}
		p("")
		if len(h.repeated) > 0 {
			p("Locations requested more than once during the herd: %s.", "`"+strings.Join(h.repeated, "`, `")+"`")
			p("")
		}
		if h.firstErr != "" {
			p("First client error: `%s`", h.firstErr)
			p("")
		}
	}

	r.sharedMarkdown(p)

	if l := r.lineage; l != nil {
		p("### Lineage (depth-3 chain)")
		p("")
		p("A fresh Portcullis whose boundary for models, base models and datasets requires a signature, SLSA v1 provenance and `lineage: {depth: 3, require: [\"*\"]}`: a model's provenance names its base model, the base model's a dataset, the dataset's a raw corpus, so the first pull of a model verifies four subjects and fetches the evidence of each. %d distinct chains, one client.", l.chains)
		p("")
		p("Ratio: p50 of the row ÷ p50 of the cached row.")
		p("")
		p("| GET of the root by digest | requests | errors | p50 | p99 | req/s | p50 ratio | server CPU/req |")
		p("|---|---:|---:|---:|---:|---:|---:|---:|")
		for _, lr := range []struct {
			what string
			c    cell
		}{
			{"cold: whole chain verified", l.cold},
			{"cold: one subject, no lineage", l.single},
			{"cold: one subject with provenance, no lineage", l.attested},
			{"cold root, dependencies already verified", l.depsCached},
			{"cached: root already verified", l.cached},
		} {
			if lr.c.requests == 0 {
				continue
			}
			p("| %s | %d | %d | %s | %s | %.0f | %s | %s |", lr.what, lr.c.requests, lr.c.errors,
				harness.Duration(lr.c.p50), harness.Duration(lr.c.p99), lr.c.rps, fmtRatio(ratio(float64(lr.c.p50), float64(l.cached.p50))), harness.Duration(lr.c.cpu))
		}
		p("")
		if l.walkN > 0 {
			p("In process, the engine alone (evidence in memory, no verdict cache): %s CPU per whole walk of four subjects (wall %s, %d walks).",
				harness.Duration(l.walkCPU), harness.Duration(l.walkWall), l.walkN)
			p("")
		}
		if l.cold.ok() && l.cached.ok() {
			p("Cold ÷ cached: p50 %s, p99 %s, server CPU/req %s.", fmtRatio(ratio(float64(l.cold.p50), float64(l.cached.p50))),
				fmtRatio(ratio(float64(l.cold.p99), float64(l.cached.p99))), fmtRatio(ratio(float64(l.cold.cpu), float64(l.cached.cpu))))
			p("")
		}
		if l.cold.ok() && l.single.ok() {
			p("Cold chain ÷ one cold verification: p50 %s, server CPU/req %s.", fmtRatio(ratio(float64(l.cold.p50), float64(l.single.p50))),
				fmtRatio(ratio(float64(l.cold.cpu), float64(l.single.cpu))))
			p("")
		}
		if l.cold.ok() && l.single.ok() && l.attested.ok() {
			// The chain is three subjects with provenance and a corpus
			// without: what verifying them one by one would cost.
			apart := 3*float64(l.attested.p50) + float64(l.single.p50)
			p("Cold chain ÷ its four subjects verified one by one (3 × one with provenance + one without, %s): p50 %s.",
				harness.Duration(time.Duration(apart)), fmtRatio(ratio(float64(l.cold.p50), apart)))
			p("")
		}
		p("Over the cold rows, `.sig` and `.att` tags (and referrers with fallback tags) left out of reading ahead because their repository's last verification did not need them: %.0f saved, %.0f read after all (`portcullis_evidence_tag_predictions_total`).", l.tagsSaved, l.tagsMissed)
		p("")
		if l.denied != "" {
			p("A chain whose corpus is unsigned is denied at its root, naming the chain: `%s`.", l.denied)
			p("")
		}
	}

	if len(r.verify) > 0 || r.verdictN > 0 {
		p("### In process")
		p("")
		p("| measurement | value |")
		p("|---|---:|")
		for _, v := range r.verify {
			p("| cold verification CPU, %s (%d runs) | %s per subject (wall %s) |", v.kind, v.n, harness.Duration(v.cpu), harness.Duration(v.wall))
		}
		if r.verdictN > 0 {
			p("| heap for %d cached verdicts (cache.Verdicts) | %s (%.0f B each) |", r.verdictN, fmtMiB(r.verdictHeap), float64(r.verdictHeap)/float64(r.verdictN))
		}
		p("")
	}

	if r.attacks != nil {
		b.WriteString(r.attacks.markdown())
	}

	p("### Targets")
	p("")
	p("| target | measured | goal | result |")
	p("|---|---:|---:|---|")
	for _, g := range r.goals {
		p("| %s | %s | %s | %s |", g.name, g.measured, g.want, passMiss(g.pass))
	}
	p("")
	return b.String()
}

func firstRequests(rows []row) int {
	for _, r := range rows {
		return r.c.requests
	}
	return 0
}
