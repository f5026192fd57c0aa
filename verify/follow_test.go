package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// scriptedDeps answers each dependency after its delay with its verdict
// or error, and counts the calls in flight.
type scriptedDeps struct {
	delay   map[string]time.Duration
	deny    map[string]bool
	fail    map[string]error
	mu      sync.Mutex
	running int
	peak    int
	stopped []string // calls that ended on their context
}

func (d *scriptedDeps) VerifyDependency(ctx context.Context, ref DependencyRef, _ LineageContext) (Verdict, error) {
	d.mu.Lock()
	d.running++
	d.peak = max(d.peak, d.running)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.running--
		d.mu.Unlock()
	}()
	select {
	case <-time.After(d.delay[ref.Name]):
	case <-ctx.Done():
		d.mu.Lock()
		d.stopped = append(d.stopped, ref.Name)
		d.mu.Unlock()
		return Verdict{}, ctx.Err()
	}
	if err := d.fail[ref.Name]; err != nil {
		return Verdict{}, err
	}
	if d.deny[ref.Name] {
		return Verdict{Digest: ref.Digest.String(), Reasons: []string{ref.Name + " is unsigned"}}, nil
	}
	return Verdict{Allowed: true, Digest: ref.Digest.String()}, nil
}

func refs(names ...string) []DependencyRef {
	out := make([]DependencyRef, len(names))
	for i, n := range names {
		out[i] = DependencyRef{Name: n, URI: "oci://r.example/" + n, Registry: "r.example", Repository: n,
			Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i+1)}}
	}
	return out
}

var followLC = LineageContext{Depth: 1, Chain: []string{"u/root@sha256:" + strings.Repeat("0", 64)}}

func TestFollowConcurrencyBound(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			d := &scriptedDeps{delay: map[string]time.Duration{}}
			names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
			for _, name := range names {
				d.delay[name] = 20 * time.Millisecond
			}
			out, err := follow(context.Background(), d, refs(names...), followLC, n)
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range out {
				if !f.decided || !f.verdict.Allowed {
					t.Errorf("dependency %d: %+v", i, f)
				}
			}
			if d.peak != n {
				t.Errorf("%d verified at once, want exactly the bound %d", d.peak, n)
			}
		})
	}
}

// A denial does not wait for a slow sibling: it is reported at once, the
// sibling is stopped and comes back undecided.
func TestFollowDenialStopsSlowSibling(t *testing.T) {
	t.Parallel()
	d := &scriptedDeps{
		delay: map[string]time.Duration{"slow": time.Minute, "bad": 10 * time.Millisecond, "ok": time.Millisecond},
		deny:  map[string]bool{"bad": true},
	}
	start := time.Now()
	out, err := follow(context.Background(), d, refs("slow", "ok", "bad"), followLC, 4)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("took %v: waited for the slow dependency", took)
	}
	if out[0].decided {
		t.Errorf("slow dependency decided: %+v", out[0])
	}
	if !out[1].decided || !out[1].verdict.Allowed {
		t.Errorf("ok dependency: %+v", out[1])
	}
	if !out[2].decided || out[2].verdict.Allowed || out[2].verdict.Reasons[0] != "bad is unsigned" {
		t.Errorf("bad dependency: %+v", out[2])
	}
	if len(d.stopped) != 1 || d.stopped[0] != "slow" {
		t.Errorf("stopped %q, want the slow one", d.stopped)
	}
}

// A dependency that cannot be decided fails the subject, naming it, even
// when every other is allowed; its siblings are stopped.
func TestFollowFailure(t *testing.T) {
	t.Parallel()
	boom := errors.New("upstream unreachable")
	d := &scriptedDeps{
		delay: map[string]time.Duration{"slow": time.Minute, "broken": time.Millisecond},
		fail:  map[string]error{"broken": boom},
	}
	_, err := follow(context.Background(), d, refs("slow", "broken"), followLC, 2)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "verifying dependency broken (oci://r.example/broken)") {
		t.Fatalf("error %v, want the broken dependency's", err)
	}
}

// The caller leaving ends every dependency and returns its error, never
// a partial result.
func TestFollowCancelled(t *testing.T) {
	t.Parallel()
	d := &scriptedDeps{delay: map[string]time.Duration{"a": time.Minute, "b": time.Minute}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	out, err := follow(ctx, d, refs("a", "b"), followLC, 2)
	if !errors.Is(err, context.DeadlineExceeded) || out != nil {
		t.Fatalf("follow = %v, %v; want the context's error", out, err)
	}
}

// With one at a time, dependencies are verified in the provenance's
// order and none is started after the first denial.
func TestFollowOneAtATime(t *testing.T) {
	t.Parallel()
	d := &scriptedDeps{delay: map[string]time.Duration{}, deny: map[string]bool{"b": true}}
	out, err := follow(context.Background(), d, refs("a", "b", "c"), followLC, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !out[0].decided || !out[1].decided || out[2].decided {
		t.Errorf("decided: %v %v %v, want a and b only", out[0].decided, out[1].decided, out[2].decided)
	}
	if d.peak != 1 {
		t.Errorf("%d at once", d.peak)
	}
}
