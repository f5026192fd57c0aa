package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
)

func TestParsePhases(t *testing.T) {
	t.Parallel()
	all, err := parsePhases("")
	if err != nil || all != nil || !all.has(phaseBomb) || all.String() != "all" {
		t.Fatalf("empty: %v %v", all, err)
	}
	s, err := parsePhases("bomb, stall")
	if err != nil || !s.has(phaseBomb) || !s.has(phaseStall) || s.has(phaseManifests) || s.String() != "bomb,stall" {
		t.Fatalf("bomb,stall: %v %v", s, err)
	}
	if !s.has(phaseFlood, phaseStall) || s.has(phaseFlood, phaseHerd) {
		t.Error("has with several names")
	}
	if _, err := parsePhases("bomb,nope"); err == nil {
		t.Error("unknown phase accepted")
	}
}

// TestBombRunVerdicts: a bomb run passes only when every pull was denied
// in time, and a run the watchdog had to kill never passes.
func TestBombRunVerdicts(t *testing.T) {
	t.Parallel()
	denied := pullOutcome{status: http.StatusForbidden, latency: 300 * time.Millisecond}
	run := func(os ...pullOutcome) bombRun {
		return bombRun{pulls: len(os), before: hostile.Stats{RSS: 30 << 20}, after: hostile.Stats{HWM: 40 << 20}, polledPeak: 39 << 20, outcomes: os}
	}
	tests := []struct {
		name string
		r    bombRun
		want bool
	}{
		{"all denied in time", run(denied, denied, denied), true},
		{"one served", run(denied, pullOutcome{status: http.StatusOK, latency: time.Millisecond}), false},
		{"one unavailable", run(denied, pullOutcome{status: http.StatusServiceUnavailable, latency: time.Millisecond}), false},
		{"one too slow", run(denied, pullOutcome{status: http.StatusForbidden, latency: 2 * time.Second}), false},
		{"no answer", run(pullOutcome{}), false},
		{"none", run(), false},
	}
	for _, tt := range tests {
		if got := tt.r.allDeniedWithin(bombDenyWithin); got != tt.want {
			t.Errorf("%s: allDeniedWithin = %v", tt.name, got)
		}
	}
	r := run(denied)
	if r.growth() != 10<<20 {
		t.Errorf("growth = %d", r.growth())
	}
	r.killed = true
	if r.allDeniedWithin(bombDenyWithin) || r.growth() != 9<<20 {
		t.Errorf("killed run: denied %v growth %d", r.allDeniedWithin(bombDenyWithin), r.growth())
	}
	ar := &attackResults{bombs: []*bombResult{{kind: "evidence bomb", runs: []bombRun{r}}}}
	for _, g := range ar.goals() {
		if g.pass {
			t.Errorf("goal %q passes for a killed run", g.name)
		}
	}
}

func TestBackTo(t *testing.T) {
	t.Parallel()
	base := hostile.Stats{Goroutines: 100, FDs: 50}
	for _, tt := range []struct {
		s    hostile.Stats
		want bool
	}{
		{hostile.Stats{Goroutines: 120, FDs: 60}, true},
		{hostile.Stats{Goroutines: 121, FDs: 60}, false},
		{hostile.Stats{Goroutines: 100, FDs: 61}, false},
		{hostile.Stats{Goroutines: -1, FDs: 50}, false}, // not scraped: not known to be back
	} {
		if got := backTo(base, tt.s); got != tt.want {
			t.Errorf("backTo(%+v) = %v", tt.s, got)
		}
	}
}

// TestStallGoalNeedsServedStreams: stalls that were never answered with
// the blob measure nothing, so they cannot pass.
func TestStallGoalNeedsServedStreams(t *testing.T) {
	t.Parallel()
	so := &stallOutcome{n: 300, before: hostile.Stats{RSS: 30 << 20}, after: hostile.Stats{HWM: 31 << 20}}
	so.statuses = map[string]int{"403": 300}
	if g := (&attackResults{stall: so}).goals(); len(g) != 1 || g[0].pass {
		t.Errorf("goal with no stream served: %+v", g)
	}
	so.statuses = map[string]int{"200": 300}
	if g := (&attackResults{stall: so}).goals(); len(g) != 1 || !g[0].pass {
		t.Errorf("goal: %+v", g)
	}
}
