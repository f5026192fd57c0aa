package proxy

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// waitFor polls cond until it holds, failing the test after a generous
// deadline. It never asserts on elapsed time.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recv receives from ch, failing the test after a generous deadline
// instead of hanging it until the go test timeout: a build that leaves a
// request unanswered fails in seconds.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

type flightOutcome struct {
	val string
	err error
}

// startCall calls g.do in a goroutine; the outcome arrives on the channel.
func startCall(ctx context.Context, g *flightGroup[string], key string, fn func(context.Context) (string, error)) <-chan flightOutcome {
	ch := make(chan flightOutcome, 1)
	go func() {
		v, err := g.do(ctx, key, fn)
		ch <- flightOutcome{v, err}
	}()
	return ch
}

func TestFlightSharesOneCall(t *testing.T) {
	t.Parallel()
	var g flightGroup[string]
	var calls atomic.Int64
	release := make(chan struct{})
	fn := func(context.Context) (string, error) {
		calls.Add(1)
		<-release
		return "verdict", nil
	}
	const n = 10
	var outs []<-chan flightOutcome
	for range n {
		outs = append(outs, startCall(context.Background(), &g, "k", fn))
	}
	waitFor(t, "every caller to join", func() bool { return g.waiters("k") == n })
	close(release)
	for _, ch := range outs {
		if o := <-ch; o.err != nil || o.val != "verdict" {
			t.Fatalf("caller got %q, %v", o.val, o.err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("work ran %d times, want 1", calls.Load())
	}
	if g.waiters("k") != 0 {
		t.Error("finished work is still in flight")
	}
}

func TestFlightOneCallerLeavingKeepsTheWork(t *testing.T) {
	t.Parallel()
	var g flightGroup[string]
	release := make(chan struct{})
	fn := func(ctx context.Context) (string, error) {
		select {
		case <-release:
			return "verdict", nil
		case <-ctx.Done():
			return "", context.Cause(ctx)
		}
	}
	ctx1, cancel1 := context.WithCancelCause(context.Background())
	first := startCall(ctx1, &g, "k", fn)
	second := startCall(context.Background(), &g, "k", fn)
	waitFor(t, "both callers to join", func() bool { return g.waiters("k") == 2 })

	gone := errors.New("first client hung up")
	cancel1(gone)
	if o := <-first; !errors.Is(o.err, gone) {
		t.Fatalf("the caller that left got %q, %v; want its own cause", o.val, o.err)
	}
	if g.waiters("k") != 1 {
		t.Fatalf("%d waiters after one of two left, want 1", g.waiters("k"))
	}
	close(release)
	if o := <-second; o.err != nil || o.val != "verdict" {
		t.Fatalf("the caller that stayed got %q, %v: one caller leaving failed the other", o.val, o.err)
	}
}

func TestFlightLastCallerLeavingCancelsTheWork(t *testing.T) {
	t.Parallel()
	var g flightGroup[string]
	var calls atomic.Int64
	cancelled := make(chan error, 1)
	blocking := func(ctx context.Context) (string, error) {
		calls.Add(1)
		<-ctx.Done()
		cancelled <- context.Cause(ctx)
		return "deny: evidence unreadable", nil
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	first := startCall(ctx1, &g, "k", blocking)
	second := startCall(ctx2, &g, "k", blocking)
	waitFor(t, "both callers to join", func() bool { return g.waiters("k") == 2 })
	cancel1()
	recv(t, first, "first")
	cancel2()
	if o := <-second; !errors.Is(o.err, context.Canceled) || o.val != "" {
		t.Fatalf("last caller got %q, %v", o.val, o.err)
	}
	select {
	case cause := <-cancelled:
		if !errors.Is(cause, errAbandoned) {
			t.Fatalf("work cancelled with %v, want errAbandoned", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the work was not cancelled when its last caller left")
	}
	waitFor(t, "the cancelled work to return", func() bool { return g.active.Load() == 0 })

	// A later caller starts fresh work rather than join the cancelled one.
	o := <-startCall(context.Background(), &g, "k", func(ctx context.Context) (string, error) {
		calls.Add(1)
		return "fresh", ctx.Err()
	})
	if o.err != nil || o.val != "fresh" || calls.Load() != 2 {
		t.Fatalf("later caller got %q, %v after %d runs; want fresh work", o.val, o.err, calls.Load())
	}
}

func TestFlightWorkKeepsTheFirstCallersValues(t *testing.T) {
	t.Parallel()
	type key struct{}
	var g flightGroup[string]
	ctx := context.WithValue(context.Background(), key{}, "depth 2")
	v, err := g.do(ctx, "k", func(ctx context.Context) (string, error) {
		s, _ := ctx.Value(key{}).(string)
		return s, nil
	})
	if err != nil || v != "depth 2" {
		t.Fatalf("work saw %q, %v", v, err)
	}
}

func TestFlightPanicReleasesEveryCaller(t *testing.T) {
	t.Parallel()
	var g flightGroup[string]
	release := make(chan struct{})
	fn := func(context.Context) (string, error) {
		<-release
		panic("boom")
	}
	a := startCall(context.Background(), &g, "k", fn)
	b := startCall(context.Background(), &g, "k", fn)
	waitFor(t, "both callers to join", func() bool { return g.waiters("k") == 2 })
	close(release)
	for _, ch := range []<-chan flightOutcome{a, b} {
		if o := <-ch; o.err == nil || !strings.Contains(o.err.Error(), "panicked") {
			t.Fatalf("caller got %q, %v; want the panic as an error", o.val, o.err)
		}
	}
	if v, err := g.do(context.Background(), "k", func(context.Context) (string, error) { return "ok", nil }); err != nil || v != "ok" {
		t.Fatalf("group unusable after a panic: %q, %v", v, err)
	}
}

func TestSettled(t *testing.T) {
	t.Parallel()
	if err := settled(context.Background()); err != nil {
		t.Fatalf("live context: %v", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errAbandoned)
	if err := settled(ctx); !errors.Is(err, errAbandoned) {
		t.Fatalf("abandoned context: %v", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), -time.Second)
	defer dcancel()
	if err := settled(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired context: %v, want DeadlineExceeded (reported as a timeout)", err)
	}
}

func newLimiterForTest(t *testing.T, opts ...Option) (*verifyLimiter, *metrics) {
	t.Helper()
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatal(err)
		}
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return newVerifyLimiter(o, m, zap.NewNop()), m
}

func TestVerifyLimiterDefaults(t *testing.T) {
	t.Parallel()
	l, _ := newLimiterForTest(t)
	if l.max < defaultVerificationsPerProc || l.queueSize != int64(defaultVerifyQueuePerSlot*l.max) || l.wait != defaultVerifyQueueWait {
		t.Errorf("defaults: max %d, queue %d, wait %s", l.max, l.queueSize, l.wait)
	}
	l, _ = newLimiterForTest(t, WithMaxVerifications(3))
	if l.max != 3 || l.queueSize != 24 {
		t.Errorf("max 3: queue %d, want 8 × max", l.queueSize)
	}
	l, _ = newLimiterForTest(t, WithMaxVerifications(3), WithVerifyQueue(0, time.Second))
	if l.queueSize != 0 || l.wait != time.Second {
		t.Errorf("queue off: size %d wait %s", l.queueSize, l.wait)
	}
	for _, bad := range []Option{WithMaxVerifications(0), WithVerifyQueue(-1, time.Second), WithVerifyQueue(1, 0)} {
		if err := bad(&options{}); err == nil {
			t.Error("invalid limit accepted")
		}
	}
}

func TestVerifyLimiterQueue(t *testing.T) {
	t.Parallel()
	l, _ := newLimiterForTest(t, WithMaxVerifications(1), WithVerifyQueue(1, time.Hour))
	release, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// One waits in the queue; the next finds it full.
	qctx, leave := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() {
		r, err := l.acquire(qctx)
		if r != nil {
			r()
		}
		queued <- err
	}()
	waitFor(t, "a verification to queue", func() bool { return l.queued.Load() == 1 })
	var oe *overloadError
	if _, err := l.acquire(context.Background()); !errors.As(err, &oe) || oe.reason != rejectQueueFull {
		t.Fatalf("with the queue full: %v, want queue_full", err)
	}

	// Leaving the queue frees the place and is not a rejection.
	leave()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued verification whose callers left: %v", err)
	}
	if l.queued.Load() != 0 {
		t.Fatalf("%d queued after the waiter left", l.queued.Load())
	}
	next := make(chan func(), 1)
	go func() {
		r, err := l.acquire(context.Background())
		if err != nil {
			t.Error(err)
		}
		next <- r
	}()
	waitFor(t, "the freed place to be taken", func() bool { return l.queued.Load() == 1 })
	release()
	release() // idempotent: a second call must not free a second slot
	r := recv(t, next, "next")
	if l.sem.TryAcquire(1) {
		t.Fatal("a slot was free while its only one is held")
	}
	r()
}

func TestVerifyLimiterQueueTimeout(t *testing.T) {
	t.Parallel()
	l, _ := newLimiterForTest(t, WithMaxVerifications(1), WithVerifyQueue(4, 10*time.Millisecond))
	release, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	var oe *overloadError
	if _, err := l.acquire(context.Background()); !errors.As(err, &oe) || oe.reason != rejectQueueTimeout {
		t.Fatalf("after the queue wait: %v, want queue_timeout", err)
	}
	if l.queued.Load() != 0 {
		t.Fatalf("%d still queued after timing out", l.queued.Load())
	}
}

// TestVerifyLimiterConcurrent checks the bound under contention.
func TestVerifyLimiterConcurrent(t *testing.T) {
	t.Parallel()
	const maxN = 3
	l, _ := newLimiterForTest(t, WithMaxVerifications(maxN), WithVerifyQueue(1000, time.Hour))
	var running, peak atomic.Int64
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			release, err := l.acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(100 * time.Microsecond)
			running.Add(-1)
			release()
		})
	}
	wg.Wait()
	if p := peak.Load(); p > maxN || p == 0 {
		t.Fatalf("peak of %d holding a slot, max %d", p, maxN)
	}
}

// TestOverloadWarningIsRateLimited: a flood of rejections is one warning
// per interval for the operator, carrying how many were rejected since the
// last one, not one line per refused request.
func TestOverloadWarningIsRateLimited(t *testing.T) {
	t.Parallel()
	l, _ := newLimiterForTest(t, WithMaxVerifications(1), WithVerifyQueue(0, time.Hour))
	core, logs := observer.New(zap.WarnLevel)
	l.log = zap.New(core)
	release, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for range 5 {
		if _, err := l.acquire(context.Background()); err == nil {
			t.Fatal("acquired a slot past the maximum")
		}
	}
	warns := logs.FilterMessage("verifications rejected: too many at once").All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings for 5 rejections within the interval, want 1", len(warns))
	}
	if f := warns[0].ContextMap(); f["rejected"] != int64(1) || f["reason"] != rejectQueueFull || f["max_verifications"] != int64(1) {
		t.Errorf("warning fields %v", f)
	}
	// Past the interval the next rejection warns again, with the count of
	// those the first warning did not report.
	l.lastWarn.Store(time.Now().Add(-overloadLogInterval).UnixNano())
	if _, err := l.acquire(context.Background()); err == nil {
		t.Fatal("acquired a slot past the maximum")
	}
	warns = logs.FilterMessage("verifications rejected: too many at once").All()
	if len(warns) != 2 || warns[1].ContextMap()["rejected"] != int64(5) {
		t.Fatalf("after the interval: %d warnings, last %v; want a second one reporting 5", len(warns), warns[len(warns)-1].ContextMap())
	}
}

// TestOverloadedRetryAfterSpread: refused clients are told to come back
// after 1 to 5 seconds, spread over the whole range so that they do not
// all return at once, and each refusal says which limit refused it.
func TestOverloadedRetryAfterSpread(t *testing.T) {
	t.Parallel()
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	mr := manifestReq{u: p.router.byKey["docker.io"], repo: "acme/app", client: "test"}
	if mr.u == nil {
		t.Fatal("no docker.io upstream")
	}
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	seen := map[int]int{}
	for range 500 {
		var e *Error
		if err := p.overloaded(mr, d, &overloadError{reason: rejectQueueFull}); !errors.As(err, &e) {
			t.Fatalf("overloaded = %v, want an *Error", err)
		}
		if e.Status != http.StatusTooManyRequests || e.RetryAfter < retryAfterMin || e.RetryAfter > retryAfterMax {
			t.Fatalf("status %d, Retry-After %d; want 429 and %d–%d", e.Status, e.RetryAfter, retryAfterMin, retryAfterMax)
		}
		seen[e.RetryAfter]++
	}
	for s := retryAfterMin; s <= retryAfterMax; s++ {
		if seen[s] == 0 {
			t.Errorf("Retry-After %d never drawn in 500 refusals: %v", s, seen)
		}
	}
	full, timeout := (&overloadError{reason: rejectQueueFull}).Error(), (&overloadError{reason: rejectQueueTimeout}).Error()
	if full == timeout || !strings.Contains(timeout, "in time") {
		t.Errorf("errors %q and %q do not tell a full queue from a wait that ran out", full, timeout)
	}
}
