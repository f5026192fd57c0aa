package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// Defaults of the bound on verifications running at once.
const (
	// defaultVerificationsPerProc times GOMAXPROCS is the default number
	// of root verifications running at once. Verification is partly CPU
	// (signatures, hashing) and partly waiting on the upstream, so a few
	// per core keep the cores busy without letting memory grow unbounded.
	defaultVerificationsPerProc = 4
	// defaultVerifyQueuePerSlot times the maximum is the default number of
	// verifications that may wait for a slot.
	defaultVerifyQueuePerSlot = 8
	// defaultVerifyQueueWait bounds how long a verification waits for a slot.
	defaultVerifyQueueWait = 10 * time.Second
	// A rejected client is told to come back after a number of seconds
	// drawn from this range, so that rejected clients do not all return
	// at the same instant.
	retryAfterMin = 1
	retryAfterMax = 5
	// overloadLogInterval is the least time between two warnings about
	// rejected verifications; each rejection is also logged at Debug.
	overloadLogInterval = 10 * time.Second
)

// Reasons a verification is refused a slot (the reason label of
// portcullis_verifications_rejected_total).
const (
	rejectQueueFull    = "queue_full"
	rejectQueueTimeout = "queue_timeout"
)

// errAbandoned is the cause with which shared work is cancelled when every
// caller waiting for it has left.
var errAbandoned = errors.New("every request waiting for this work left")

// flightGroup runs one piece of work per key for all the callers asking
// for it at the same time, like golang.org/x/sync/singleflight, with one
// difference: the work runs on its own context, which is cancelled (with
// cause errAbandoned) when the last caller waiting for it leaves before it
// finishes. One caller leaving never fails the others; all of them leaving
// stops the work, so a client that hangs up leaves nothing running behind
// it. A caller arriving after that starts fresh work.
//
// The zero value is ready to use.
type flightGroup[V any] struct {
	mu    sync.Mutex
	calls map[string]*flightCall[V]
	// active counts works not yet returned, including abandoned ones
	// still winding down.
	active atomic.Int64
}

type flightCall[V any] struct {
	done    chan struct{} // closed when val and err are set
	val     V
	err     error
	waiters int // callers waiting; guarded by the group's mu
	cancel  context.CancelCauseFunc
}

// do returns the result of fn for key, running fn only when no call for
// key is in flight. fn gets a context that carries the values of the
// caller that started it and is cancelled only when every caller has left.
// A caller whose ctx ends first gets its context's cause. A panic in fn is
// returned to every caller as an error.
func (g *flightGroup[V]) do(ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flightCall[V]{}
	}
	c, ok := g.calls[key]
	if !ok {
		wctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		c = &flightCall[V]{done: make(chan struct{}), cancel: cancel}
		g.calls[key] = c
		g.active.Add(1)
		go g.run(wctx, key, c, fn)
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
	}
	g.mu.Lock()
	c.waiters--
	if c.waiters == 0 && g.calls[key] == c {
		// Nobody wants the result any more: stop the work, and let the
		// next caller start afresh rather than join work being torn down.
		delete(g.calls, key)
		c.cancel(errAbandoned)
	}
	g.mu.Unlock()
	var zero V
	return zero, context.Cause(ctx)
}

func (g *flightGroup[V]) run(ctx context.Context, key string, c *flightCall[V], fn func(context.Context) (V, error)) {
	normal := false
	defer func() {
		if !normal {
			// A panic (or runtime.Goexit) must still release the callers.
			c.err = fmt.Errorf("shared work panicked: %v", recover())
		}
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		g.mu.Unlock()
		c.cancel(context.Canceled)
		close(c.done)
		g.active.Add(-1)
	}()
	c.val, c.err = fn(ctx)
	normal = true
}

// waiters is the number of callers waiting for key's work; 0 when none
// is in flight.
func (g *flightGroup[V]) waiters(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return 0
}

// rootFlights are pulls' verifications, dependencyFlights the lineage
// dependencies verified on behalf of parent verifications.
type (
	rootFlights       = flightGroup[flightResult]
	dependencyFlights = flightGroup[verify.Verdict]
)

// settled returns an error when ctx ended before the work that used it
// returned. Whatever such work decided may rest on evidence it could not
// read for want of time (a Verifier may well answer "no valid signature"
// then), so it is a failure to decide, never a verdict to cache.
func settled(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil {
		return fmt.Errorf("verification did not finish: %w", cause)
	}
	return nil
}

// verifyLimiter bounds the root verifications running at once, with a
// bounded queue in front of them.
//
// Only root verifications (a client's pull) take a slot. A lineage
// dependency is verified inside its parent's slot: the parent holds its
// slot while it waits for its dependencies, so were they to need slots of
// their own, parents holding every slot would wait forever on children
// that can never start. Dependencies are bounded instead by the lineage
// depth and the number of dependencies a statement may name. Verdict-cache
// hits and index coverage never get this far and take no slot.
type verifyLimiter struct {
	sem       *semaphore.Weighted
	max       int
	queueSize int64
	wait      time.Duration
	queued    atomic.Int64
	m         *metrics
	log       *zap.Logger

	lastWarn     atomic.Int64 // unix nanoseconds of the last warning
	sinceWarning atomic.Int64 // rejections since the last warning
}

func newVerifyLimiter(o options, m *metrics, log *zap.Logger) *verifyLimiter {
	maxN := o.maxVerifications
	if maxN == 0 {
		maxN = defaultVerificationsPerProc * runtime.GOMAXPROCS(0)
	}
	queue := defaultVerifyQueuePerSlot * maxN
	if o.verifyQueueSet {
		queue = o.verifyQueue
	}
	wait := o.verifyQueueWait
	if wait == 0 {
		wait = defaultVerifyQueueWait
	}
	return &verifyLimiter{
		sem:       semaphore.NewWeighted(int64(maxN)),
		max:       maxN,
		queueSize: int64(queue),
		wait:      wait,
		m:         m,
		log:       log,
	}
}

// acquire takes a slot, waiting in the queue when none is free. It fails
// with an *overloadError when the queue is full or the wait runs out, and
// with ctx's cause when ctx ends first (everyone waiting for the
// verification left, which frees its place in the queue). release must be
// called once the verification is over.
func (l *verifyLimiter) acquire(ctx context.Context) (release func(), err error) {
	if !l.sem.TryAcquire(1) {
		if l.queued.Add(1) > l.queueSize {
			l.queued.Add(-1)
			return nil, l.reject(rejectQueueFull)
		}
		l.m.verifyQueued.Inc()
		wctx, cancel := context.WithTimeout(ctx, l.wait)
		err := l.sem.Acquire(wctx, 1)
		cancel()
		l.queued.Add(-1)
		l.m.verifyQueued.Dec()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				return nil, cause
			}
			return nil, l.reject(rejectQueueTimeout)
		}
	}
	l.m.verifyRunning.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.m.verifyRunning.Dec()
			l.sem.Release(1)
		})
	}, nil
}

// reject counts a refused verification and warns, at most once per
// overloadLogInterval, with the number refused since the last warning.
func (l *verifyLimiter) reject(reason string) error {
	l.m.verifyRejected.WithLabelValues(reason).Inc()
	l.sinceWarning.Add(1)
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last >= int64(overloadLogInterval) && l.lastWarn.CompareAndSwap(last, now) {
		l.log.Warn("verifications rejected: too many at once",
			zap.String("reason", reason),
			zap.Int64("rejected", l.sinceWarning.Swap(0)),
			zap.Int("max_verifications", l.max),
			zap.Int64("verify_queue", l.queueSize),
			zap.Duration("verify_queue_wait", l.wait))
	}
	return &overloadError{reason: reason}
}

// overloadError is a verification refused for want of a slot. It is not a
// verdict: the client is asked to retry and nothing is cached.
type overloadError struct{ reason string }

func (e *overloadError) Error() string {
	if e.reason == rejectQueueTimeout {
		return "no verification slot became free in time"
	}
	return "too many verifications waiting"
}

// overloaded answers a refused verification with 429 TOOMANYREQUESTS and a
// Retry-After.
func (p *Proxy) overloaded(mr manifestReq, digest v1.Hash, oe *overloadError) error {
	if ce := p.log.Check(zap.DebugLevel, "verification rejected"); ce != nil {
		ce.Write(zap.String("reason", oe.reason), zap.String("digest", digest.String()),
			zap.String("upstream", mr.u.name), zap.String("repository", mr.repo), zap.String("client", mr.client))
	}
	return &Error{
		Status:     http.StatusTooManyRequests,
		Code:       CodeTooManyRequests,
		Message:    fmt.Sprintf("too many verifications in progress (%s): retry later", oe.reason),
		Detail:     map[string]any{"reason": oe.reason, "digest": digest.String()},
		RetryAfter: retryAfterMin + rand.IntN(retryAfterMax-retryAfterMin+1),
	}
}
