package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/verify"
)

// SharedState shares what allowed manifests open between replicas behind
// one Service: the blobs an image's manifest references (blob gating) and
// the children an index lists (coverage). A replica records them when it
// serves an allowed manifest and asks for them only when its own memory
// misses, before denying a blob or verifying a child on its own.
//
// Whatever is stored there is untrusted: an implementation bounds, parses
// and binds every value to the key it was read for, and reports anything
// else, and every failure or timeout, as a miss. A miss is never an allow:
// the proxy then decides as a single replica would.
type SharedState interface {
	// RecordBlobs opens blobs (blob gating key → the size the manifest's
	// descriptor declares) until until, each with the decision that
	// opened it (origins: blob gating key → an opaque string of at most
	// 256 printable ASCII bytes, see grantOrigin). An error means they
	// may not be recorded: the proxy tries again on the next pull.
	RecordBlobs(ctx context.Context, blobs map[string]int64, origins map[string]string, until time.Time) error
	// LookupBlob returns the declared size of an open blob and when it
	// closes. An error means the shared state could not be asked (down,
	// slow): whether another replica opened the blob is unknown.
	LookupBlob(ctx context.Context, key string) (size int64, until time.Time, ok bool, err error)
	// BlobOrigin returns the origin recorded with an open blob; false
	// when there is none or it cannot be read.
	BlobOrigin(ctx context.Context, key string) (origin string, ok bool)
	// RecordCoverage records that the manifests under children (verdict
	// keys) are covered until until by the index parent, whose verdict is v.
	RecordCoverage(ctx context.Context, children []string, parent string, v verify.Verdict, until time.Time) error
	// LookupCoverage returns the index covering the manifest under key (a
	// verdict key), its verdict and when the coverage ends.
	LookupCoverage(ctx context.Context, key string) (parent string, v verify.Verdict, until time.Time, ok bool)
}

const (
	// sharedWriters bounds the writes to the shared state in flight; a
	// write that finds no room is dropped (and retried on the next pull),
	// so a slow Redis never holds more requests than this.
	sharedWriters = 256
	// sharedRecordedSize bounds the memory of manifests recently written
	// through (see shareServed).
	sharedRecordedSize = 100_000
)

// WithSharedState shares blob gating and index coverage with the other
// replicas through s. Default: none, every replica keeps its own.
func WithSharedState(s SharedState) Option {
	return func(o *options) error {
		if s == nil {
			return errors.New("nil shared state")
		}
		o.shared = s
		o.sharedUndecided = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_blob_gating_undecided_total",
			Help: "Blob requests this replica's own blob gating did not open while the shared state could not be asked: answered 503 UNAVAILABLE with Retry-After, neither served nor denied.",
		})
		o.collectors = append(o.collectors, o.sharedUndecided)
		return nil
	}
}

// sharedEpoch is implemented by a shared state that can tell when what was
// written to it may have been lost (an outage, a restart without
// persistence, eviction): Epoch then returns a new value. Epoch must not
// block; it is asked on every allowed pull.
type sharedEpoch interface {
	Epoch() uint64
}

// sharing is the proxy's side of the shared state; nil without one.
type sharing struct {
	s SharedState
	// slots bounds the writes in flight; writes waits for them (tests).
	slots  chan struct{}
	writes sync.WaitGroup
	// recorded holds the verdict keys of manifests written through
	// lately, so a warm pull writes again only once a quarter of the
	// gating TTL has passed: often enough to keep the shared entries as
	// fresh as the local ones, not once per pull.
	recorded *ttlCache[string, struct{}]
	// epoch is the shared state's Epoch (see sharedEpoch) when recorded
	// was last trusted.
	epoch atomic.Uint64
	// notBefore (Unix ns) is when a revocation was last added: blob
	// entries recorded before it may open a revoked manifest's blobs, so
	// each opens its blob only once its origin is checked.
	notBefore atomic.Int64
	// undecidedLog keeps undecided blob requests to a log line a minute.
	undecidedLog logGate
	// pending gathers refreshes of blob entries (see refreshLater);
	// batchDelay, when set (tests), replaces refreshBatchDelay.
	pending    pendingRefresh
	batchDelay time.Duration
}

// revoked makes the shared blob entries recorded until now suspect and
// has this replica write through again what it serves.
func (sh *sharing) revoked(now time.Time) {
	if sh == nil {
		return
	}
	sh.notBefore.Store(now.UnixNano())
	sh.recorded.c.Purge()
}

func newSharing(s SharedState) *sharing {
	if s == nil {
		return nil
	}
	return &sharing{
		s:        s,
		slots:    make(chan struct{}, sharedWriters),
		recorded: newTTLCache[string, struct{}](sharedRecordedSize, blobAllowTTL/4),
	}
}

// write records what a served manifest opened before the manifest is
// written to the client: the client's next request, for a blob or a
// child, may reach another replica at once (containerd and crane pull
// layers in parallel over several connections), and an entry still on
// its way there would deny it. The Guard bounds the wait (shared.redis
// timeout) and skips it while Redis is out of reach; it is paid once per
// manifest per quarter gating TTL, not on every warm pull. A write that
// failed is forgotten from recorded, so the next pull writes it again.
func (sh *sharing) write(key string, write func(context.Context) error) {
	select {
	case sh.slots <- struct{}{}:
	default:
		// As many writes as slots are waiting on a slow Redis: this one
		// is dropped rather than queued, and retried on the next pull.
		sh.recorded.c.Remove(key)
		return
	}
	sh.writes.Add(1)
	defer func() {
		<-sh.slots
		sh.writes.Done()
	}()
	if write(context.Background()) != nil {
		sh.recorded.c.Remove(key)
	}
}

// writeFor writes through for d: before d is served (write), unless d's
// verdict came from the shared state. The replica that decided it wrote
// through what the manifest opens before serving it, so another replica
// already finds those entries; this write only refreshes them and need
// not cost the client a round trip.
func (sh *sharing) writeFor(d *manifestDecision, write func(context.Context) error) {
	if !d.sharedVerdict {
		sh.write(d.key, write)
		return
	}
	sh.writes.Add(1)
	go func() {
		defer sh.writes.Done()
		sh.write(d.key, write)
	}()
}

// refreshBatchDelay is how long the refreshes of blob entries served on
// verdicts read from the shared state are gathered before they are
// written, in one round trip: a rollout's pulls then cost Redis one write
// per replica every few milliseconds, not one per pull, and the pulls do
// not queue behind them.
const refreshBatchDelay = 5 * time.Millisecond

// pendingRefresh gathers the blob entries refreshLater is given.
type pendingRefresh struct {
	mu      sync.Mutex
	blobs   map[string]int64
	origins map[string]string
	until   time.Time // the earliest of those given
	keys    []string  // the verdict keys they were served for
}

// refreshLater has blobs written with the next batch (see
// refreshBatchDelay). The replica that decided key's verdict wrote them
// before serving it, so the write only refreshes them.
func (sh *sharing) refreshLater(key string, blobs map[string]int64, origin string, until time.Time) {
	pr := &sh.pending
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.blobs == nil {
		pr.blobs, pr.origins, pr.until = make(map[string]int64, len(blobs)), make(map[string]string, len(blobs)), until
		sh.writes.Add(1)
		delay := refreshBatchDelay
		if sh.batchDelay > 0 {
			delay = sh.batchDelay
		}
		time.AfterFunc(delay, sh.flushRefresh)
	}
	for k, v := range blobs {
		pr.blobs[k] = v
		pr.origins[k] = origin
	}
	if until.Before(pr.until) {
		pr.until = until
	}
	pr.keys = append(pr.keys, key)
}

func (sh *sharing) flushRefresh() {
	defer sh.writes.Done()
	pr := &sh.pending
	pr.mu.Lock()
	blobs, origins, until, keys := pr.blobs, pr.origins, pr.until, pr.keys
	pr.blobs, pr.origins, pr.keys = nil, nil, nil
	pr.mu.Unlock()
	ok := false
	select {
	case sh.slots <- struct{}{}:
		ok = sh.s.RecordBlobs(context.Background(), blobs, origins, until) == nil
		<-sh.slots
	default:
	}
	if !ok {
		// Written again on the next pull of each.
		for _, k := range keys {
			sh.recorded.c.Remove(k)
		}
	}
}

// shareServed writes through what a served manifest opened, at most once
// per quarter gating TTL per manifest. Denied manifests never get here.
func (p *Proxy) shareServed(d *manifestDecision) {
	sh := p.shared
	if sh == nil || !d.verdict.Allowed {
		return
	}
	if e, ok := sh.s.(sharedEpoch); ok {
		if n := e.Epoch(); n != sh.epoch.Load() {
			// The shared state may have lost what was written to it:
			// write through again what is served from now on.
			sh.epoch.Store(n)
			sh.recorded.c.Purge()
		}
	}
	if _, ok := sh.recorded.get(d.key); ok {
		return
	}
	sh.recorded.add(d.key, struct{}{})
	pm, u, repo := d.parsed, d.mr.u.name, d.mr.repo
	if pm.index {
		if d.source == sourceEvidence {
			return
		}
		v := d.verdict
		if v.Mode != verify.ModeEnforce || v.Boundary == "" || p.opts.coverageTTL <= 0 || len(pm.children) == 0 {
			return
		}
		until := coverageEnd(v, p.opts.coverageTTL, p.coverage.now())
		children := make([]string, 0, len(pm.children))
		for _, c := range pm.children {
			children = append(children, verdictKey(d.fingerprint, u, repo, c))
		}
		parent := d.digest
		sh.writeFor(d, func(ctx context.Context) error { return sh.s.RecordCoverage(ctx, children, parent, v, until) })
		return
	}
	blobs := make(map[string]int64, len(pm.layers)+1)
	blobs[blobKey(u, repo, pm.config.digest)] = pm.config.size
	for _, l := range pm.layers {
		blobs[blobKey(u, repo, l.digest)] = l.size
	}
	until := p.blobs.now().Add(blobAllowTTL)
	origin := grantOrigin(d)
	if d.sharedVerdict {
		sh.refreshLater(d.key, blobs, origin, until)
		return
	}
	origins := make(map[string]string, len(blobs))
	for k := range blobs {
		origins[k] = origin
	}
	sh.write(d.key, func(ctx context.Context) error { return sh.s.RecordBlobs(ctx, blobs, origins, until) })
}

// coverageEnd is when coverage by an index allowed by v ends: the coverage
// TTL after v was decided (from now for a verdict without a decision time).
func coverageEnd(v verify.Verdict, ttl time.Duration, now time.Time) time.Time {
	if v.CheckedAt.IsZero() {
		return now.Add(ttl)
	}
	return v.CheckedAt.Add(ttl)
}

// sharedBlob asks the shared state for a blob the local gating misses and
// keeps the answer locally for as long as it holds. undecided is set when
// the shared state could not be asked: another replica may have served
// the manifest that opens the blob, so a denial would be a guess.
func (p *Proxy) sharedBlob(ctx context.Context, key string) (size int64, ok, undecided bool) {
	sh := p.shared
	if sh == nil {
		return 0, false, false
	}
	size, until, ok, err := sh.s.LookupBlob(ctx, key)
	if err != nil {
		return 0, false, ctx.Err() == nil
	}
	if !ok || size < 0 || !p.blobs.now().Before(until) {
		return 0, false, false
	}
	g := blobGrant{size: size}
	// An entry lives blobAllowTTL from when it was recorded. One recorded
	// before the last revocation opens the blob only if the decision it
	// names still stands.
	if nb := sh.notBefore.Load(); nb != 0 && until.Add(-blobAllowTTL).UnixNano() < nb {
		origin, ok := sh.s.BlobOrigin(ctx, key)
		if !ok {
			return 0, false, false
		}
		if g.src = p.standingOrigin(origin); g.src == nil {
			return 0, false, false
		}
	}
	p.blobs.addUntil(key, g, until)
	return size, true, false
}

// grantOrigin names the decision d's blobs are opened on, for the shared
// state: d's digest and the verdict key of the verdict d was served on
// (d's own, the covering index's, or the subject's for evidence).
func grantOrigin(d *manifestDecision) string {
	key := d.key
	var other string
	switch d.source {
	case sourceCoverage:
		other = d.coveredBy
	case sourceEvidence:
		other = d.evidenceOf
	}
	if other != "" {
		h, err := v1.NewHash(other)
		if err != nil {
			return ""
		}
		key = verdictKey(d.fingerprint, d.mr.u.name, d.mr.repo, h)
	}
	return d.digest + " " + key
}

// standingOrigin is the decision origin names (see grantOrigin) if it
// still stands: the manifest is not revoked, and the verdict it was served
// on is still cached, an allow (only allows are recorded, see
// shareServed), and matched by no revocation. Anything else,
// an origin that does not parse included, is nil. The origin was read from
// the shared state: untrusted.
func (p *Proxy) standingOrigin(origin string) *grantSource {
	manifest, key, ok := strings.Cut(origin, " ")
	if !ok || len(key) != 2*sha256.Size || !isLowerHex(key) {
		return nil
	}
	if _, err := v1.NewHash(manifest); err != nil {
		return nil
	}
	vc := p.opts.verdicts
	if vc == nil {
		return nil
	}
	v, ok := vc.Get(key)
	if !ok || !v.Allowed {
		return nil
	}
	if revs := p.revs.current(); !revs.empty() && (revs.digests[manifest] != nil || revs.matches(v)) {
		return nil
	}
	return &grantSource{manifest: manifest, verdict: v}
}

// undecidedBlob answers a blob request that neither this replica's gating
// nor the unreachable shared state could open. The blob is not served,
// but denying it would turn a Redis outage into failed pulls of verified
// images whenever a client's layer requests reach another replica than
// its manifest request. A 503 with Retry-After asks the client to try
// again; Connection: close makes the retry a new connection, which a
// Service may send to the replica that served the manifest.
func (p *Proxy) undecidedBlob(w http.ResponseWriter, u *upstreamEntry, repo string, digest v1.Hash) error {
	p.opts.sharedUndecided.Inc()
	if p.shared.undecidedLog.allow(time.Now(), time.Minute) {
		p.log.Warn("blob not opened here and the shared state cannot be asked: answered 503 (client retries; pin clients to a replica with session affinity)",
			zap.String("upstream", u.name), zap.String("repository", repo), zap.String("digest", digest.String()))
	}
	w.Header().Set("Connection", "close")
	return &Error{
		Status:     http.StatusServiceUnavailable,
		Code:       CodeUnavailable,
		Message:    fmt.Sprintf("blob %s: this replica did not serve a manifest referencing it and the shared state is unavailable; retry", digest),
		RetryAfter: 1,
	}
}

// sharedCovered gives d the verdict of an index another replica served,
// under the same rules as local coverage: an enforce-mode allow in a named
// boundary, which d, matched on its own artifact type, must fall in too.
// With revocations in force it is skipped: the compact shared verdict
// lacks the attestations and lineage a revocation may name, so d is
// decided on its own instead.
func (p *Proxy) sharedCovered(ctx context.Context, d *manifestDecision) error {
	sh := p.shared
	if sh == nil || p.opts.coverageTTL <= 0 || !p.revs.current().empty() {
		return nil
	}
	parent, v, until, ok := sh.s.LookupCoverage(ctx, d.key)
	if !ok || parent == "" || v.Digest != parent || !v.Allowed || v.Mode != verify.ModeEnforce || v.Boundary == "" {
		return nil
	}
	if !p.coverage.now().Before(until) {
		return nil
	}
	ce := coverEntry{parent: parent, boundary: v.Boundary, verdict: v}
	p.coverage.addUntil(d.key, ce, until)
	return p.applyCoverage(ctx, d, ce)
}
