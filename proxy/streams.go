package proxy

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// DefaultClientStallGrace is the default of WithClientStallGrace.
const DefaultClientStallGrace = 5 * time.Second

// Bounds of how often a blocked client write checks for progress: a
// quarter of the grace, so a client that reads is seen reading well
// within it, but not so often that stalled clients cost wake-ups.
const (
	minProgressTick = 10 * time.Millisecond
	maxProgressTick = time.Second
)

// progressTick is the client connections' progress check interval for a
// stall grace; 0 (no checks between idle deadlines) when eviction is off.
func progressTick(grace time.Duration) time.Duration {
	if grace <= 0 {
		return 0
	}
	return min(max(grace/4, minProgressTick), maxProgressTick)
}

// streamConn is what the stream table needs of a client connection.
// *clientConn implements it.
type streamConn interface {
	stalledFor(now time.Time) time.Duration
	bytesWritten() int64
	drop() bool
}

// stream is one blob response running to a client, from before its
// upstream blob is opened until the handler returns.
type stream struct {
	conn       streamConn
	start      time.Time
	sentBefore int64 // the connection's bytes before this response
	upstream   string
	repository string
	digest     string
	client     string
	evicted    atomic.Bool
}

// wasEvicted reports whether the stream was dropped for a waiting pull;
// false for nil (a request not served through Serve).
func (s *stream) wasEvicted() bool { return s != nil && s.evicted.Load() }

// streamTable holds the running blob streams per upstream. Each holds (or
// waits for) one of the upstream's stream connections, which are capped;
// clients that stop reading would hold them until the client idle
// timeout, and every other pull from that upstream would wait for one.
type streamTable struct {
	mu         sync.Mutex
	byUpstream map[string]map[*stream]struct{}
}

func newStreamTable() *streamTable {
	return &streamTable{byUpstream: map[string]map[*stream]struct{}{}}
}

// admit registers s, first evicting for it as evict does.
func (t *streamTable) admit(s *stream, limit int, grace time.Duration, now time.Time) (*stream, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.byUpstream[s.upstream]
	if set == nil {
		set = map[*stream]struct{}{}
		t.byUpstream[s.upstream] = set
	}
	victim, longest := evictLocked(set, s, limit, grace, now)
	set[s] = struct{}{}
	return victim, longest
}

// evict serves s, registered and waiting for a connection: when the other
// streams of its upstream number limit or more, it takes out the one whose
// client has sent nothing for longest, provided that is at least grace,
// marks it evicted and returns it with how long it was stalled; the caller
// drops its connection. limit or grace 0 evicts nothing.
func (t *streamTable) evict(s *stream, limit int, grace time.Duration, now time.Time) (*stream, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.byUpstream[s.upstream]
	if _, ok := set[s]; !ok {
		return nil, 0
	}
	return evictLocked(set, s, limit, grace, now)
}

func evictLocked(set map[*stream]struct{}, s *stream, limit int, grace time.Duration, now time.Time) (*stream, time.Duration) {
	others := len(set)
	if _, ok := set[s]; ok {
		others--
	}
	if limit <= 0 || grace <= 0 || others < limit {
		return nil, 0
	}
	var victim *stream
	var longest time.Duration
	for o := range set {
		if d := o.conn.stalledFor(now); o != s && d >= grace && d > longest {
			victim, longest = o, d
		}
	}
	if victim != nil {
		victim.evicted.Store(true)
		delete(set, victim)
	}
	return victim, longest
}

// remove unregisters s; nil and evicted streams are no-ops.
func (t *streamTable) remove(s *stream) {
	if s == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if set := t.byUpstream[s.upstream]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(t.byUpstream, s.upstream)
		}
	}
}

// count is the number of streams registered for upstream.
func (t *streamTable) count(upstream string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byUpstream[upstream])
}

// startStream registers the blob response r is about to stream from u and,
// when u's stream connections are all taken, drops the stream whose client
// has been stalled longest (past the grace) so this one can get a
// connection. It returns nil for a request not served through Serve: it
// has no connection to account for. The caller removes the stream when it
// ends.
func (p *Proxy) startStream(r *http.Request, u *upstreamEntry, repo string, digest v1.Hash) *stream {
	cc := clientConnFrom(r.Context())
	if cc == nil {
		return nil
	}
	now := time.Now()
	s := &stream{
		conn: cc, start: now, sentBefore: cc.bytesWritten(),
		upstream: u.name, repository: repo, digest: digest.String(), client: r.RemoteAddr,
	}
	victim, stalled := p.streams.admit(s, u.client.MaxConns(), p.opts.clientStallGrace, now)
	p.dropStream(victim, stalled, now)
	return s
}

// whileOpening keeps evicting for s, every progress tick until stop is
// called, while s waits for a stream connection of u: a pull that arrived
// together with clients that then stalled need not wait for the upstream
// timeout. Nil s, no known connection cap or eviction off: nothing runs.
func (p *Proxy) whileOpening(s *stream, u *upstreamEntry) (stop func()) {
	limit, grace := u.client.MaxConns(), p.opts.clientStallGrace
	if s == nil || limit <= 0 || grace <= 0 {
		return func() {}
	}
	// A timer rather than a goroutine: many pulls may be waiting.
	var mu sync.Mutex
	stopped := false
	var timer *time.Timer
	tick := progressTick(grace)
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(tick, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		now := time.Now()
		victim, stalled := p.streams.evict(s, limit, grace, now)
		p.dropStream(victim, stalled, now)
		timer.Reset(tick)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// dropStream closes an evicted stream's client connection, which fails
// its blocked write; its handler then aborts and closes the upstream
// body, freeing the connection.
func (p *Proxy) dropStream(victim *stream, stalled time.Duration, now time.Time) {
	if victim == nil || !victim.conn.drop() {
		return
	}
	p.metrics.streamsEvicted.Inc()
	p.log.Info("client stalled: stream dropped for a waiting pull", zap.String("client", victim.client),
		zap.String("upstream", victim.upstream), zap.String("repository", victim.repository),
		zap.String("digest", victim.digest), zap.Int64("bytes", victim.conn.bytesWritten()-victim.sentBefore),
		zap.Duration("stalled_for", stalled), zap.Duration("streaming_for", now.Sub(victim.start)))
}
