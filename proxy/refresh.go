package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

// Refresh-ahead defaults.
const (
	DefaultRefreshConcurrency = 4
	DefaultRefreshEntries     = 10_000
	// refreshAt is the share of the allow TTL after which a verdict still
	// being pulled is decided again.
	refreshAt = 0.8
)

// RefreshAhead re-verifies allowed digests in the background before their
// verdict expires, so that a removed signature or a new failing
// attestation is seen without waiting for a cold pull, and a digest pulled
// all the time never pays for a cold verification.
type RefreshAhead struct {
	// AllowTTL is the verdict cache's allow TTL. A verdict pulled within
	// the last AllowTTL is verified again once 80% of it has passed.
	AllowTTL time.Duration
	// Concurrency bounds the re-verifications running at once (default
	// DefaultRefreshConcurrency). Each also needs a free verification
	// slot, taken without waiting: clients are never queued behind one.
	Concurrency int
	// Entries bounds the digests tracked (default DefaultRefreshEntries);
	// the least recently pulled are forgotten first.
	Entries int
}

// WithRefreshAhead turns refresh-ahead on; it runs while Serve (or
// RunRefreshAhead) does. It needs WithVerdictCache. Default: off.
func WithRefreshAhead(r RefreshAhead) Option {
	return func(o *options) error {
		if r.AllowTTL <= 0 {
			return errors.New("refresh-ahead needs a positive allow TTL")
		}
		if r.Concurrency < 0 || r.Entries < 0 {
			return errors.New("negative refresh-ahead concurrency or entries")
		}
		if r.Concurrency == 0 {
			r.Concurrency = DefaultRefreshConcurrency
		}
		if r.Entries == 0 {
			r.Entries = DefaultRefreshEntries
		}
		o.refresh = &r
		return nil
	}
}

// refresher tracks the allowed digests clients pull and re-verifies those
// whose verdict is due.
type refresher struct {
	cfg  RefreshAhead
	lead time.Duration // age at which a verdict is due
	now  func() time.Time
	sem  chan struct{}

	mu      sync.Mutex
	entries *lru.Cache[string, *refreshEntry]
	running map[string]bool
	wg      sync.WaitGroup
}

type refreshEntry struct {
	mr          manifestReq
	digest      v1.Hash
	fingerprint string
	decided     time.Time // when the verdict was decided
	checked     time.Time // the verdict's CheckedAt
	pulled      time.Time // when it was last served
}

func newRefresher(cfg RefreshAhead) (*refresher, error) {
	c, err := lru.New[string, *refreshEntry](cfg.Entries)
	if err != nil {
		return nil, err
	}
	return &refresher{
		cfg:     cfg,
		lead:    time.Duration(float64(cfg.AllowTTL) * refreshAt),
		now:     time.Now,
		sem:     make(chan struct{}, cfg.Concurrency),
		entries: c,
		running: map[string]bool{},
	}, nil
}

func (p *Proxy) initRefresh() error {
	if p.opts.refresh == nil || p.opts.verdicts == nil {
		return nil
	}
	r, err := newRefresher(*p.opts.refresh)
	if err != nil {
		return err
	}
	p.refresh = r
	return nil
}

// track notes a served allow of a client's pull.
func (p *Proxy) track(d *manifestDecision) {
	r := p.refresh
	if r == nil || !d.verdict.Allowed || d.mr.lineage.Chain != nil {
		return
	}
	if d.source != sourceVerified && d.source != sourceCache {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries.Get(d.key)
	if !ok {
		decided := d.verdict.CheckedAt
		if d.source == sourceVerified || decided.IsZero() || decided.After(now) {
			decided = now
		}
		mr := d.mr
		mr.ref, mr.client = d.digest, "refresh-ahead"
		r.entries.Add(d.key, &refreshEntry{mr: mr, digest: d.desc.Digest, fingerprint: d.fingerprint, decided: decided,
			checked: d.verdict.CheckedAt, pulled: now})
		return
	}
	e.pulled = now
	if d.source == sourceVerified {
		e.decided, e.checked = now, d.verdict.CheckedAt
	}
}

// RunRefreshAhead re-verifies due verdicts until ctx ends, then waits for
// the re-verifications it started. Serve runs it; it returns at once when
// refresh-ahead is off.
func (p *Proxy) RunRefreshAhead(ctx context.Context) {
	r := p.refresh
	if r == nil {
		return
	}
	every := min(max((r.cfg.AllowTTL-r.lead)/4, time.Second), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	defer r.wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.refreshDue(ctx)
		}
	}
}

// refreshDue starts the re-verification of due verdicts, as many as the
// concurrency bound and the free verification slots allow, and reports
// how many it started. The others wait for a later round.
func (p *Proxy) refreshDue(ctx context.Context) int {
	r := p.refresh
	now := r.now()
	v := p.currentVerifier()
	type due struct {
		key string
		e   refreshEntry
	}
	var list []due
	r.mu.Lock()
	for _, k := range r.entries.Keys() {
		e, ok := r.entries.Peek(k)
		if !ok || r.running[k] {
			continue
		}
		if now.Sub(e.pulled) > r.cfg.AllowTTL || e.fingerprint != v.FingerprintFor(e.mr.u.name, e.mr.repo) {
			// Not pulled within the TTL, or decided under a policy no
			// longer in force: left to expire.
			r.entries.Remove(k)
			continue
		}
		if now.Sub(e.decided) >= r.lead {
			de := *e
			de.mr.v = v
			list = append(list, due{k, de})
		}
	}
	r.mu.Unlock()
	started := 0
	for _, d := range list {
		select {
		case r.sem <- struct{}{}:
		default:
			return started
		}
		if !p.slots.sem.TryAcquire(1) {
			<-r.sem
			return started
		}
		r.mu.Lock()
		r.running[d.key] = true
		r.mu.Unlock()
		r.wg.Add(1)
		started++
		go func() {
			defer r.wg.Done()
			defer func() { <-r.sem }()
			defer p.slots.sem.Release(1)
			p.refreshOne(ctx, d.key, d.e)
			r.mu.Lock()
			delete(r.running, d.key)
			r.mu.Unlock()
		}()
	}
	return started
}

// refreshOne verifies e again through the shared flight (a client pulling
// it meanwhile waits for this result instead of verifying too) and stores
// the verdict. An allow turned into a denial is drift: reported, and what
// the allow opened (coverage, blobs) is withdrawn.
func (p *Proxy) refreshOne(ctx context.Context, key string, e refreshEntry) {
	r := p.refresh
	release, skip := p.refreshTurn(ctx, key, e)
	if skip {
		return
	}
	// Released once the verdict is stored (or the re-verification failed).
	defer release()
	res, err := p.flights.do(ctx, key, func(fctx context.Context) (res flightResult, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				p.log.Error("re-verification panicked", zap.Any("panic", rec), zap.String("digest", e.digest.String()))
				res, err = flightResult{}, fmt.Errorf("re-verification panicked")
			}
		}()
		vctx, cancel := context.WithTimeout(fctx, p.opts.verifyTimeout)
		defer cancel()
		m, fromCache, err := p.manifestBytes(vctx, e.mr.u, e.mr.repo, e.digest, nil)
		if err != nil {
			return flightResult{}, &fetchError{err}
		}
		v, err := p.evaluate(vctx, e.mr, m)
		if err == nil {
			err = settled(vctx)
		}
		if err != nil {
			return flightResult{}, &verifyError{err}
		}
		p.opts.verdicts.Add(key, v)
		return flightResult{verdict: v, manifest: m, fromCache: fromCache}, nil
	})
	if err != nil {
		// The cached allow stays until it expires; the next pull after
		// that decides cold, failing closed if it must.
		p.metrics.refreshes.WithLabelValues("error").Inc()
		p.log.Warn("re-verification failed", zap.String("upstream", e.mr.u.name), zap.String("repository", e.mr.repo),
			zap.String("digest", e.digest.String()), zap.Error(err))
		r.forget(key)
		return
	}
	if res.cached {
		// Joined a pull that found the verdict cached: nothing was
		// decided; the next round tries again.
		return
	}
	v := res.verdict
	if v.Allowed {
		p.metrics.refreshes.WithLabelValues("allow").Inc()
		r.mu.Lock()
		if cur, ok := r.entries.Peek(key); ok {
			cur.decided, cur.checked = r.now(), v.CheckedAt
		}
		r.mu.Unlock()
		return
	}
	p.metrics.refreshes.WithLabelValues("deny").Inc()
	r.forget(key)
	p.refreshDrift(e, v)
}

// sharedVerdicts is what a verdict cache shared between replicas offers
// beside VerdictCache: the verdict as stored for all of them, not this
// replica's own copy (cache/shared.Verdicts).
type sharedVerdicts interface {
	GetShared(key string) (verify.Verdict, bool)
}

// refreshTurn keeps replicas that share verdicts from each re-verifying a
// digest they all serve: every replica tracks what its own clients pull,
// so without it N replicas re-verify a popular digest N times, each with
// its own upstream requests. The re-verification takes the same lease as a
// pull's verification. skip: another replica holds the lease (its verdict
// is seen at a later round), or it decided the digest again since this
// replica did and its allow is adopted as this round's. Otherwise release
// is to be called once the verdict is stored. Whatever goes wrong with
// the lease, this replica re-verifies alone, as before.
func (p *Proxy) refreshTurn(ctx context.Context, key string, e refreshEntry) (release func(), skip bool) {
	sf := p.opts.sharedFlight
	if sf == nil {
		return noRelease, false
	}
	release, won, err := sf.f.Acquire(ctx, key)
	switch {
	case err != nil:
		return noRelease, false
	case !won:
		p.metrics.refreshes.WithLabelValues("shared").Inc()
		return noRelease, true
	}
	// The holder stores its verdict before it releases the lease: read
	// with the lease held, a newer verdict is complete. Only an allow is
	// adopted; a denial is this replica's to find, with its drift report
	// and what the allow opened here to close.
	if sv, ok := p.opts.verdicts.(sharedVerdicts); ok {
		if v, ok := sv.GetShared(key); ok && v.Allowed && v.CheckedAt.After(e.checked) {
			release()
			r := p.refresh
			r.mu.Lock()
			if cur, ok := r.entries.Peek(key); ok {
				cur.decided, cur.checked = r.now(), v.CheckedAt
			}
			r.mu.Unlock()
			p.metrics.refreshes.WithLabelValues("shared").Inc()
			return noRelease, true
		}
	}
	return release, false
}

func (r *refresher) forget(key string) {
	r.mu.Lock()
	r.entries.Remove(key)
	r.mu.Unlock()
}

// refreshDrift reports an allow that re-verification denied and withdraws
// what it opened; the denial itself is in the verdict cache for the next
// pull.
func (p *Proxy) refreshDrift(e refreshEntry, v verify.Verdict) {
	digest := e.digest.String()
	p.lastAllowed.Add(e.mr.u.name+"\x00"+e.mr.repo+"\x00"+digest, false)
	p.metrics.drift.WithLabelValues(v.Boundary).Inc()
	p.coverage.removeIf(func(_ string, ce coverEntry) bool { return ce.parent == digest })
	p.closeBlobs(map[string]bool{digest: true}, nil)
	decision := "deny"
	if v.Served() {
		decision = "warn"
	}
	mode := v.Mode
	if mode == "" {
		mode = verify.ModeEnforce
	}
	p.record(Decision{
		Time:       time.Now().UTC(),
		Client:     e.mr.client,
		Upstream:   e.mr.u.name,
		Repository: e.mr.repo,
		Reference:  digest,
		Digest:     digest,
		Boundary:   v.Boundary,
		Decision:   decision,
		Mode:       mode,
		Signers:    v.Signers,
		Reasons:    v.Reasons,
		Drift:      true,
	})
}
