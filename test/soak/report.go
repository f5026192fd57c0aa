package main

import (
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

type snapshot struct {
	label    string
	at       time.Duration // since the load started
	s        hostile.Stats
	requests int
}

type report struct {
	o           options
	started     time.Time
	loadStarted time.Time
	elapsed     time.Duration
	env         []string
	upstream    string
	c           *content
	pushed      time.Duration
	t           *tally

	mu       sync.Mutex
	events   []string
	failure  string
	restarts int
	snaps    struct {
		start, warm, middle, end, after snapshot
	}
	warmPeak       int64 // largest RSS polled during the ordinary-load part
	requestsAtStop int
	peak           int64 // largest RSS polled every 100 ms
	killed         bool
	maxGoroutines  float64
	maxFDs         int
	maxThreads     int
	settledIn      time.Duration
	settledOK      bool
}

// fail records why the run failed early; the first reason is kept.
func (r *report) fail(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failure == "" {
		r.failure = reason
	}
}

func (r *report) failed() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failure
}

// check is one PASS/FAIL line.
type check struct {
	name, measured string
	pass           bool
}

// acceptable is what a refused class may be answered: a refusal, a
// back-off, a server-side failure, or no answer at all. Never bytes.
func acceptable(class, outcome string) bool {
	if strings.HasPrefix(outcome, "conn ") || outcome == "abandoned" || outcome == "bad request" {
		return true
	}
	code, err := strconv.Atoi(outcome)
	if err != nil {
		return false
	}
	switch {
	case code == 429 || code >= 500:
		return true
	case class == classUnknown || class == classFlood:
		// Not found, or refused when it could not be looked up.
		return code == 404 || code == 403
	default:
		return code == 403
	}
}

func (r *report) checks() []check {
	t := r.t
	var cs []check
	t.mu.Lock()
	verified := 0
	for _, n := range t.verified {
		verified += n
	}
	var odd []string
	for class := range refusedClasses {
		for outcome, n := range t.byClass[class] {
			if !acceptable(class, outcome) {
				odd = append(odd, fmt.Sprintf("%s: %s ×%d", class, outcome, n))
			}
		}
	}
	violations := t.violations
	t.mu.Unlock()
	sort.Strings(odd)
	cs = append(cs,
		check{"no answer served bytes it must not: every 200 manifest body hashes to the allowed digest asked for, every 200 blob body to its digest and length, no 200 for a denied, unknown or bomb subject", fmt.Sprintf("%d violations, %d 200 answers checked", violations, verified), violations == 0},
		check{"denied and bomb subjects only got 403, 429 or 5xx (unknown and flood: 403, 404, 429 or 5xx)", orNone(odd), len(odd) == 0},
	)
	failure := r.failed()
	alive := failure == "" && !r.killed
	cs = append(cs, check{"Portcullis stayed up and under the RSS limit", orText(failure, fmt.Sprintf("peak RSS %s (limit %s)", hostile.MiB(r.peak), hostile.MiB(r.o.rssLimit))), alive})
	cs = append(cs, check{fmt.Sprintf("upstream killed and restarted %d times", r.o.restarts), strconv.Itoa(r.restarts), r.restarts == r.o.restarts})
	if alive {
		b, a := r.snaps.start.s, r.snaps.after.s
		cs = append(cs,
			check{"goroutines after the load within 10 % of idle (+10)", fmt.Sprintf("%s → %s", goroutines(b), goroutines(a)), within(a.Goroutines, b.Goroutines, settleGoroutines)},
			check{"open fds after the load within 10 % of idle (+5)", fmt.Sprintf("%d → %d", b.FDs, a.FDs), within(float64(a.FDs), float64(b.FDs), settleFDs)},
			check{"VmRSS after the load within 10 % of the peak under ordinary load", fmt.Sprintf("%s → %s", hostile.MiB(r.warmPeak), hostile.MiB(a.RSS)), r.warmPeak > 0 && within(float64(a.RSS), float64(r.warmPeak), 0)},
		)
	}
	return cs
}

func (r *report) pass() bool {
	for _, c := range r.checks() {
		if !c.pass {
			return false
		}
	}
	return true
}

func (r *report) markdown() string {
	var sb strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	o := r.o
	p("### Soak run")
	p("")
	p("- date: %s, total %s", r.started.UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second))
	p("- load: %s requested, %d clients, request deadline %s; hostile: %s", o.duration, o.clients, o.timeout, hostileText(o.hostile))
	p("- upstream: %s, killed with SIGKILL and restarted %d of %d times", r.upstream, r.restarts, o.restarts)
	for _, e := range r.env {
		p("- %s", e)
	}
	if c := r.c; c != nil {
		p("- content (pushed in %s): %d allowed images (signed; one with a 4 MiB and one with a 16 MiB layer), %d denied (half unsigned, half signed by an untrusted key), %d allowed and %d denied blobs", r.pushed.Round(time.Second), len(c.allowed), len(c.denied), len(c.allowedBlobs), len(c.deniedBlobs))
		if len(c.bombs) > 0 {
			p("- evidence bombs: %d subjects × %d referrers of %s (%s each); predicate bomb: %d subject × %d referrers of %s", len(c.bombs), c.bombInfo.Referrers, hostile.MiB(c.bombInfo.ItemBytes), hostile.MiB(c.bombInfo.TotalBytes), len(c.pbombs), c.pbombInfo.Referrers, hostile.MiB(c.pbombInfo.ItemBytes))
		}
	}
	for _, h := range o.hostile {
		switch h {
		case hostileBomb:
			p("- bombs: every bomb subject asked for at once, every 5 s (a deny verdict is cached for deny_ttl, so each is verified again when it expires)")
		case hostileFlood:
			p("- flood: %d requests for random digests through a tarpit upstream, 64 at a time, each abandoned after 100 ms; a round about every 20 s", o.floodN)
		case hostileStall:
			p("- stall: %d connections ask for the 16 MiB blob and read nothing, held 15 s then closed; a round about every 25 s", o.stalls)
		}
	}
	p("")
	if len(r.events) > 0 {
		p("Events:")
		p("")
		for _, e := range r.events {
			p("- %s", e)
		}
		p("")
	}

	p("#### Requests")
	p("")
	total, served := 0, 0
	errs := map[string]int{}
	p("| class | requests | checked 200 | answers | slowest answer (asked at) |")
	p("|---|---:|---:|---|---:|")
	r.t.mu.Lock()
	classes := map[string]bool{}
	for c := range r.t.byClass {
		classes[c] = true
	}
	r.t.mu.Unlock()
	for _, class := range classOrder {
		if !classes[class] {
			continue
		}
		n := 0
		r.t.mu.Lock()
		for outcome, v := range r.t.byClass[class] {
			n += v
			if outcome == "200" {
				served += v
			} else {
				errs[outcome] += v
			}
		}
		ver, slow, at := r.t.verified[class], r.t.slowest[class], r.t.slowestAt[class]
		r.t.mu.Unlock()
		total += n
		when := ""
		if !at.IsZero() && !r.loadStarted.IsZero() {
			when = fmt.Sprintf(" (+%s)", at.Sub(r.loadStarted).Round(time.Second))
		}
		p("| %s | %d | %d | %s | %s%s |", class, n, ver, strings.Join(r.t.outcomes(class), ", "), harness.Duration(slow), when)
	}
	p("")
	dur := o.duration.Seconds()
	p("Requests: %d (%.0f/s over the load), answered 200: %d. Every other answer, by kind: %s.", total, float64(total)/dur, served, harness.CountsText(errs))
	p("")
	r.t.mu.Lock()
	outage := maps.Clone(r.t.outage)
	r.t.mu.Unlock()
	up := map[string]int{}
	for k, v := range errs {
		if n := v - outage[k]; n > 0 {
			up[k] = n
		}
	}
	p("Of those, while the upstream was down or within 2 s of its return: %s. While it was up: %s. (Failures during an outage come back fast, so an outage of seconds shows as thousands of answers.)", harness.CountsText(outage), harness.CountsText(up))
	p("")

	p("#### Portcullis resources")
	p("")
	p("| when | VmRSS | VmHWM | goroutines | open fds | threads | requests so far |")
	p("|---|---:|---:|---:|---:|---:|---:|")
	for _, sn := range []snapshot{r.snaps.start, r.snaps.warm, r.snaps.middle, r.snaps.end, r.snaps.after} {
		if sn.label == "" {
			continue
		}
		label := sn.label
		if sn.at > 0 {
			label += fmt.Sprintf(" (+%s)", sn.at.Round(time.Second))
		}
		p("| %s | %s | %s | %s | %d | %d | %d |", label, hostile.MiB(sn.s.RSS), hostile.MiB(sn.s.HWM), goroutines(sn.s), sn.s.FDs, sn.s.Threads, sn.requests)
	}
	p("")
	settle := fmt.Sprintf("back within bounds %s after the load stopped", r.settledIn.Round(time.Second))
	if !r.settledOK {
		settle = fmt.Sprintf("not back within bounds %s after the load stopped", r.settledIn.Round(time.Second))
	}
	p("Peak RSS under ordinary load only (the first %s): %s.", r.snaps.warm.at.Round(time.Second), hostile.MiB(r.warmPeak))
	p("Peaks during the load: RSS %s (polled every 100 ms), goroutines %s, open fds %d, threads %d (sampled every 5 s). Resources %s.", hostile.MiB(r.peak), strconv.FormatFloat(r.maxGoroutines, 'f', 0, 64), r.maxFDs, r.maxThreads, settle)
	p("")

	p("#### Checks")
	p("")
	p("| check | measured | result |")
	p("|---|---|---|")
	for _, c := range r.checks() {
		p("| %s | %s | %s |", c.name, strings.ReplaceAll(c.measured, "|", "\\|"), passFail(c.pass))
	}
	p("")
	r.t.mu.Lock()
	ex := append([]string(nil), r.t.examples...)
	r.t.mu.Unlock()
	if len(ex) > 0 {
		p("Violations (first %d):", len(ex))
		p("")
		for _, e := range ex {
			p("- %s", e)
		}
		p("")
	}
	p("Result: %s", passFail(r.pass()))
	return sb.String()
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none other"
	}
	return strings.Join(s, "; ")
}

func orText(s, alt string) string {
	if s != "" {
		return s
	}
	return alt
}

func goroutines(s hostile.Stats) string {
	if s.Goroutines < 0 {
		return "–"
	}
	return strconv.FormatFloat(s.Goroutines, 'f', 0, 64)
}
