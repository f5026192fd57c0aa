package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults of WithBlobShare.
const (
	// DefaultBlobShareBuffer is how far the fastest reader of a shared
	// fetch held in memory may run ahead of the slowest.
	DefaultBlobShareBuffer = 8 << 20
	// DefaultBlobShareMemory bounds the buffers of all shared fetches
	// held in memory together.
	DefaultBlobShareMemory = 64 << 20
)

// shareChunk is the unit a shared fetch's memory buffer grows and shrinks
// by. Each fetch may always hold two, budget or not, so that it never
// waits for another fetch's readers.
const shareChunk = 512 << 10

// fileReadBuffer is what a reader of a fetch written to the cache reads
// the file with when it cannot pass the file to its connection (TLS):
// each such reader holds one for as long as its client takes, so it is
// as small as what a cache hit copies through, and larger than a TLS
// record.
const fileReadBuffer = 32 << 10

var fileReadPool = sync.Pool{New: func() any { b := make([]byte, fileReadBuffer); return &b }}

// shareChunkPool recycles the memory chunks of shared fetches: a first
// pull streams hundreds of MiB through them, and a fresh chunk each time
// costs zeroing, page faults and a GC cycle every few dozen MiB.
var shareChunkPool = sync.Pool{New: func() any { b := make([]byte, 0, shareChunk); return &b }}

// blobFetchOptions are set by WithBlobCache and WithBlobShare.
type blobFetchOptions struct {
	cache  BlobCache
	buffer int64
	memory int64
}

// WithBlobShare bounds the memory with which concurrent pulls of one blob
// share one upstream fetch when it is not written to a blob cache: a
// fetch's readers may be up to buffer bytes apart (the fetch waits for its
// slowest reader beyond that), and the buffers of all fetches together
// take at most memory bytes, plus 1 MiB per running fetch. A reader that
// takes nothing for the client stall grace while the others wait is
// dropped from the fetch. buffer 0 turns sharing off for fetches not
// cached: each pull fetches on its own, holding its own upstream stream
// connection. Default: off for a Proxy built without this option (the
// serve command passes the blob_share config, DefaultBlobShareBuffer and
// DefaultBlobShareMemory unless set). With a blob cache, fetches the
// cache takes are always shared.
func WithBlobShare(buffer, memory int64) Option {
	return func(o *options) error {
		if buffer < 0 || memory < 0 {
			return errors.New("negative blob share buffer")
		}
		o.blobFetch.buffer, o.blobFetch.memory = buffer, memory
		return nil
	}
}

// blobFetches runs the upstream fetches that concurrent pulls of a blob
// share, and serves blobs from the cache when there is one.
type blobFetches struct {
	p      *Proxy
	cache  BlobCache
	buffer int64
	memory int64
	used   atomic.Int64

	mu      sync.Mutex
	flights map[string]*blobFlight
	// cacheLog keeps a failing disk to one log line a minute; roomLog
	// does the same for blobs refused room mid-fetch, apart, so that
	// refusals never hide a failing disk's line.
	cacheLog, roomLog logGate

	hits, misses prometheus.Counter
	cacheErrors  *prometheus.CounterVec
	fetches      *prometheus.CounterVec
	joins        prometheus.Counter
	alone        prometheus.Counter
	dropped      prometheus.Counter
}

func newBlobFetches(p *Proxy, o blobFetchOptions, reg prometheus.Registerer) (*blobFetches, error) {
	f := &blobFetches{p: p, cache: o.cache, buffer: o.buffer, memory: o.memory, flights: map[string]*blobFlight{}}
	f.hits = prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_blob_cache_hits_total",
		Help: "Blob requests answered from the blob cache, after blob gating allowed them."})
	f.misses = prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_blob_cache_misses_total",
		Help: "Blob requests allowed by blob gating that the blob cache did not hold."})
	f.cacheErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portcullis_blob_cache_errors_total",
		Help: "Blob cache failures by operation (create, write, commit); the blob is still served."}, []string{"op"})
	f.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portcullis_blob_shared_fetches_total",
		Help: "Upstream blob fetches shared by concurrent pulls, by where their bytes go (cache: a file in the blob cache; memory: a bounded buffer)."}, []string{"mode"})
	f.joins = prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_blob_shared_joins_total",
		Help: "Blob pulls served from an upstream fetch another pull started."})
	f.alone = prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_blob_shared_late_total",
		Help: "Blob pulls that fetched on their own instead of sharing: the shared fetch was already past its buffer, or had failed in another repository or found another length."})
	f.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_blob_shared_dropped_total",
		Help: "Readers dropped from a shared fetch because they took nothing for the stall grace while the others waited."})
	buf := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "portcullis_blob_shared_buffer_bytes",
		Help: "Bytes of memory buffers held by shared blob fetches."}, func() float64 { return float64(f.used.Load()) })
	for _, c := range []prometheus.Collector{f.hits, f.misses, f.cacheErrors, f.fetches, f.joins, f.alone, f.dropped, buf} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, op := range []string{"create", "write", "commit"} {
		f.cacheErrors.WithLabelValues(op)
	}
	for _, m := range []string{"cache", "memory"} {
		f.fetches.WithLabelValues(m)
	}
	return f, nil
}

// tryAcquire takes n bytes of the shared-fetch memory budget.
func (f *blobFetches) tryAcquire(n int64) bool {
	for {
		u := f.used.Load()
		if u+n > f.memory {
			return false
		}
		if f.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// serveBlobShared serves a blob blob gating has allowed (wouldDeny: in a
// warn boundary only) from the cache or from a fetch shared with
// concurrent pulls. It reports false when the request is to go to the
// upstream on its own: a HEAD or a conditional or ranged request the
// cache does not hold, a pull that came too late to share, or one whose
// answer could differ from the shared fetch's.
//
// Registries scope blobs to repositories. A blob opened for repo by a
// verified manifest there (gated) is one the upstream serves in repo, so
// it is read from the cache and shared with any gated pull of the same
// upstream. One served without that (a warn boundary's would-be denial,
// or gating off) is the upstream's to authorize: a cache hit is first
// confirmed by a HEAD in repo, and a fetch is shared only within repo.
func (p *Proxy) serveBlobShared(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, digest v1.Hash, size int64, wouldDeny *blobGate) (bool, error) {
	f := p.fetches
	if f == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false, nil
	}
	gated := p.opts.blobGating && wouldDeny == nil
	if f.cache != nil {
		if served := p.serveCachedBlob(w, r, u, repo, digest, size, wouldDeny, gated); served {
			return true, nil
		}
		f.misses.Inc()
	}
	if r.Method == http.MethodHead || (f.cache == nil && f.buffer == 0) {
		return false, nil
	}
	for _, k := range blobRequestHeaders {
		if r.Header.Get(k) != "" {
			// Conditionals and ranges are the upstream's to answer; a
			// part of a blob cannot be checked against its digest.
			return false, nil
		}
	}
	key := blobFlightKey(u.name, digest)
	if !gated {
		key += "\x00" + repo
	}
	fl, rd, leader := f.join(r.Context(), key, repo)
	if fl == nil {
		f.alone.Inc()
		return false, nil
	}
	left := false
	defer func() {
		if !left {
			f.leave(fl, rd)
		}
	}()
	if leader {
		// The fetch waits for a stream connection like any pull, and may
		// drop a stalled client's stream for it.
		st := p.startStream(r, u, repo, digest)
		defer p.streams.remove(st)
		stop := p.whileOpening(st, u)
		go f.run(fl.ctx, fl, u, repo, digest, size)
		select {
		case <-fl.ready:
		case <-r.Context().Done():
		}
		stop()
	} else {
		f.joins.Inc()
	}
	select {
	case <-fl.ready:
	case <-r.Context().Done():
		return true, clientGone(r.Context())
	}
	// A joiner whose answer could differ fetches on its own: the fetch
	// was opened for another repository and failed there (a repository
	// that lacks the blob must not fail the others), or the upstream's
	// length is not what this repository's verified manifest declares
	// (its own fetch refuses that before any byte, as without sharing).
	if !leader && (fl.openErr != nil && fl.repo != repo || fl.openErr == nil && size >= 0 && fl.size != size) {
		left = true
		f.leave(fl, rd)
		f.alone.Inc()
		return false, nil
	}
	if fl.openErr != nil {
		return true, fl.openErr
	}
	if wouldDeny != nil {
		p.recordBlob(r, u, repo, digest, *wouldDeny)
	}
	copyHeaders(w.Header(), fl.header, blobResponseHeaders)
	w.Header().Set("Docker-Content-Digest", digest.String())
	w.Header().Set("Content-Length", strconv.FormatInt(fl.size, 10))
	w.WriteHeader(http.StatusOK)
	cw := &clientWriter{w: w}
	var n int64
	var err error
	var src *os.File
	rf, _ := forFile(w).(io.ReaderFrom)
	if rf != nil {
		src = fl.fileReader(r)
	}
	if src != nil {
		n, err = fl.sendTo(r.Context(), rd, src, rf, cw)
	} else {
		n, err = fl.readTo(r.Context(), rd, cw)
	}
	p.metrics.blobBytes.Add(float64(n))
	if err == nil {
		if fl.file != nil {
			// The client has every byte; waiting for the commit (a sync
			// and a rename) before the handler returns makes the next
			// request a cache hit, not another reader of the file.
			_ = http.NewResponseController(w).Flush()
			select {
			case <-fl.done:
			case <-r.Context().Done():
			}
		}
		return true, nil
	}
	switch {
	case errors.Is(err, errDroppedReader):
		p.log.Info("client too slow: dropped from a shared blob fetch", zap.String("client", r.RemoteAddr),
			zap.String("upstream", u.name), zap.String("repository", repo),
			zap.String("digest", digest.String()), zap.Int64("bytes", n))
	case cw.err != nil && errors.Is(cw.err, os.ErrDeadlineExceeded):
		p.log.Info("client stalled: blob stream dropped", zap.String("client", r.RemoteAddr),
			zap.String("upstream", u.name), zap.String("repository", repo),
			zap.String("digest", digest.String()), zap.Int64("bytes", n))
	}
	// The fetch's own failure is logged once by the fetch; aborting is
	// the only way left to tell this client the body is not the blob.
	panic(http.ErrAbortHandler)
}

func blobFlightKey(upstream string, digest v1.Hash) string {
	return upstream + "\x00" + digest.String()
}

// blobFlight is one upstream fetch of a blob and the pulls reading it.
// The fetch writes either to a cache file, which readers read back as it
// grows, or to a bounded chain of memory chunks, which are freed once
// every reader has passed them.
type blobFlight struct {
	f   *blobFetches
	key string
	// repo is the leader's repository, the one the fetch asks the
	// upstream in.
	repo string
	// ready is closed once the upstream answered; the fields below it are
	// set before and read-only after.
	ready   chan struct{}
	openErr error
	size    int64
	header  http.Header
	file    BlobCacheWriter // nil: memory chunks
	// ctx is the fetch's; cancel ends it when the last reader leaves.
	ctx    context.Context
	cancel context.CancelFunc

	// done is closed once the fetch has finished (and committed).
	done chan struct{}

	mu sync.Mutex
	// changed is closed and replaced whenever written or finished
	// changes; space takes a token whenever a reader moves on.
	changed  chan struct{}
	space    chan struct{}
	written  int64
	finished bool
	err      error
	// abandoned: every reader left before the fetch finished.
	abandoned bool
	readers   map[*flightReader]struct{}
	// chunks hold bytes [base, written); every chunk but the last is full.
	chunks [][]byte
	base   int64
	// The slowest reader's position and since when it has not moved,
	// while the writer waits for room.
	waitMin   int64
	waitSince time.Time
	closed    bool
	// dropping counts readers dropped for being slow that have not left
	// yet: one may still be sending from a chunk it held when dropped, so
	// chunks freed meanwhile are left to the GC, not recycled.
	dropping int
	// fileFailed: a write to the cache file failed. The file holds bytes
	// [0, fileEnd), which its readers still read from it; the rest goes
	// to memory chunks from base = fileEnd, as for a fetch without a
	// cache, and the file is never committed.
	fileFailed bool
	fileEnd    int64
}

type flightReader struct {
	pos     int64
	dropped bool
}

var errDroppedReader = errors.New("dropped from a shared blob fetch: too slow")

// join registers a reader of the running fetch for key, or starts one
// (leader). It returns a nil flight when the running fetch has already
// freed its first bytes: the pull fetches on its own.
// The fetch's context keeps the leader's values (trace) but not its
// cancellation.
func (f *blobFetches) join(parent context.Context, key, repo string) (fl *blobFlight, rd *flightReader, leader bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rd = &flightReader{}
	if fl := f.flights[key]; fl != nil {
		fl.mu.Lock()
		defer fl.mu.Unlock()
		if fl.base > 0 {
			return nil, nil, false
		}
		fl.readers[rd] = struct{}{}
		return fl, rd, false
	}
	fl = &blobFlight{f: f, key: key, repo: repo, ready: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{}),
		space: make(chan struct{}, 1), readers: map[*flightReader]struct{}{rd: {}}}
	fl.ctx, fl.cancel = context.WithCancel(context.WithoutCancel(parent))
	f.flights[key] = fl
	return fl, rd, true
}

// leave unregisters rd; the last reader to leave a running fetch cancels
// it, and the last to leave a finished one closes its file.
func (f *blobFetches) leave(fl *blobFlight, rd *flightReader) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl.mu.Lock()
	defer fl.mu.Unlock()
	delete(fl.readers, rd)
	if rd.dropped {
		fl.dropping--
	}
	if len(fl.readers) > 0 {
		fl.freeLocked()
		select {
		case fl.space <- struct{}{}:
		default:
		}
		return
	}
	f.abandonLocked(fl)
	fl.freeLocked()
	if fl.finished {
		// Otherwise finish closes it: a reader may still join.
		fl.closeLocked()
	}
}

// abandonLocked ends a fetch no reader is left for, unless it has
// delivered every byte: such a fetch is left to finish, as its readers
// may leave before it is committed to the cache, and the next pull must
// find it there (or join it meanwhile). An abandoned fetch leaves the
// table at once, not when its stream returns, so that no pull joins it.
// It reports whether the fetch was abandoned. f.mu and fl.mu are held.
func (f *blobFetches) abandonLocked(fl *blobFlight) bool {
	if len(fl.readers) > 0 || fl.finished || fl.deliveredLocked() {
		return false
	}
	fl.abandoned = true
	fl.cancel()
	if f.flights[fl.key] == fl {
		delete(f.flights, fl.key)
	}
	return true
}

// abandonUnread is abandonLocked for a writer that has dropped every
// reader: their handlers leave only once their stalled writes fail, and
// the upstream connection is not to be held for them until then.
func (f *blobFetches) abandonUnread(fl *blobFlight) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return f.abandonLocked(fl)
}

// run fetches the blob once for every reader. It runs on a context of its
// own, cancelled when the last reader leaves, so that no one client's
// hang-up fails the others.
func (f *blobFetches) run(ctx context.Context, fl *blobFlight, u *upstreamEntry, repo string, digest v1.Hash, size int64) {
	p := f.p
	defer fl.cancel()
	resp, err := u.client.OpenBlob(ctx, http.MethodGet, repo, digest, size, nil)
	if err == nil && resp.StatusCode != http.StatusOK {
		// Without Range or conditionals only a 200 is a blob.
		resp.Body.Close()
		p.metrics.upstreamErrors.WithLabelValues(u.name, "status_other").Inc()
		fl.openErr = errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered %d for a blob", u.name, resp.StatusCode)
	} else if err != nil {
		fl.openErr = p.blobOpenFailure(ctx, u, repo, digest, err)
	}
	if fl.openErr != nil {
		close(fl.ready)
		f.finish(fl, fl.openErr)
		return
	}
	defer resp.Body.Close()
	fl.size = resp.ContentLength
	fl.header = resp.Header.Clone()
	mode := "memory"
	if f.cache != nil {
		w, cerr := f.cache.Create(u.name, digest, fl.size)
		if cerr == nil {
			fl.file, mode = w, "cache"
		} else if !errors.Is(cerr, ErrBlobCacheFull) {
			f.cacheErrors.WithLabelValues("create").Inc()
			f.logCacheError("blob cache: cannot create a file; the blob is served without caching it",
				zap.String("upstream", u.name), zap.String("digest", digest.String()), zap.Error(cerr))
		}
	}
	f.fetches.WithLabelValues(mode).Inc()
	close(fl.ready)

	var sink io.Writer = &memorySink{fl: fl, ctx: ctx}
	if fl.file != nil {
		sink = &fileSink{fl: fl, ctx: ctx, upstream: u.name, digest: digest}
	}
	n, limited, err := upstream.Stream(sink, resp.Body, p.opts.streamBudget.StreamBudget)
	if limited {
		p.metrics.streamBufLimited.Inc()
	}
	if fl.file != nil {
		fl.mu.Lock()
		failed := fl.fileFailed
		fl.mu.Unlock()
		if err == nil && !failed {
			if cerr := fl.file.Commit(); cerr != nil {
				// The readers have their verified bytes either way.
				f.cacheErrors.WithLabelValues("commit").Inc()
				f.logCacheError("blob cache: cannot commit a verified blob", zap.String("upstream", u.name),
					zap.String("digest", digest.String()), zap.Error(cerr))
			}
		} else {
			fl.file.Abort()
		}
	}
	fl.mu.Lock()
	abandoned := fl.abandoned
	fl.mu.Unlock()
	if err != nil && !abandoned {
		kind := "blob_stream"
		switch {
		case errors.Is(err, upstream.ErrDigestMismatch):
			kind = "blob_digest_mismatch"
		case errors.Is(err, upstream.ErrTooLarge):
			kind = "blob_too_long"
		case errors.Is(err, upstream.ErrUpstreamStalled):
			kind = "upstream_stalled"
		}
		// One line for the fetch, however many readers it aborts.
		p.log.Warn("blob stream failed", zap.String("upstream", u.name),
			zap.String("repository", repo), zap.String("digest", digest.String()), zap.Int64("bytes", n),
			zap.Int("readers", fl.readerCount()), zap.Error(err))
		p.metrics.upstreamErrors.WithLabelValues(u.name, kind).Inc()
	}
	f.finish(fl, err)
}

// logCacheError logs a blob cache failure, at most once a minute: every
// failure is counted, and a broken disk would otherwise log each blob.
func (f *blobFetches) logCacheError(msg string, fields ...zap.Field) {
	if f.cacheLog.allow(time.Now(), time.Minute) {
		f.p.log.Error(msg, fields...)
	}
}

// blobOpenFailure maps a failure to open the blob, as serveBlob does.
func (p *Proxy) blobOpenFailure(ctx context.Context, u *upstreamEntry, repo string, digest v1.Hash, err error) error {
	if errors.Is(err, upstream.ErrUnexpectedPartial) {
		p.log.Error("upstream answered a whole-blob request with partial content", zap.String("upstream", u.name),
			zap.String("repository", repo), zap.String("digest", digest.String()), zap.Error(err))
		p.metrics.upstreamErrors.WithLabelValues(u.name, "unexpected_partial").Inc()
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered a request for the whole blob with partial content", u.name)
	}
	return p.upstreamFailure(ctx, u, err, CodeBlobUnknown, "blob")
}

// finish takes the fetch out of the table (after a commit, so the next
// pull finds the cache) and wakes every reader.
func (f *blobFetches) finish(fl *blobFlight, err error) {
	f.mu.Lock()
	if f.flights[fl.key] == fl {
		delete(f.flights, fl.key)
	}
	f.mu.Unlock()
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.finished, fl.err = true, err
	if err == nil && fl.written != fl.size {
		fl.err = fmt.Errorf("shared blob fetch ended at %d of %d bytes", fl.written, fl.size)
	}
	fl.broadcastLocked()
	close(fl.done)
	if len(fl.readers) == 0 {
		fl.freeLocked()
		fl.closeLocked()
	}
}

// deliveredLocked reports whether the fetch has produced the whole blob,
// verified (the last bytes are released only once they matched).
func (fl *blobFlight) deliveredLocked() bool {
	select {
	case <-fl.ready:
		return fl.openErr == nil && fl.written == fl.size
	default:
		return false
	}
}

func (fl *blobFlight) readerCount() int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return len(fl.readers)
}

func (fl *blobFlight) broadcastLocked() {
	close(fl.changed)
	fl.changed = make(chan struct{})
}

func (fl *blobFlight) closeLocked() {
	if fl.file != nil && !fl.closed {
		fl.closed = true
		fl.file.Close()
	}
}

// minPosLocked is the slowest reader's position; written when none.
func (fl *blobFlight) minPosLocked() int64 {
	m := fl.written
	for rd := range fl.readers {
		m = min(m, rd.pos)
	}
	return m
}

// freeLocked drops the full memory chunks every reader has passed.
func (fl *blobFlight) freeLocked() {
	if len(fl.chunks) == 0 {
		return
	}
	m := fl.minPosLocked()
	if len(fl.readers) == 0 {
		m = fl.written
		if !fl.finished {
			m = -1
		}
	}
	for len(fl.chunks) > 0 {
		c := fl.chunks[0]
		if len(c) < cap(c) && !fl.finished || fl.base+int64(len(c)) > m {
			break
		}
		fl.f.used.Add(-int64(cap(c)))
		fl.base += int64(len(c))
		fl.recycleLocked(c)
		fl.chunks[0] = nil
		fl.chunks = fl.chunks[1:]
	}
	if fl.finished && len(fl.readers) == 0 {
		for _, c := range fl.chunks {
			fl.f.used.Add(-int64(cap(c)))
			fl.recycleLocked(c)
		}
		fl.chunks = nil
	}
}

// recycleLocked returns a freed chunk to the pool unless a dropped reader
// may still be sending from it. Every other reader is past it: a reader
// moves its position only once its write from the chunk has returned.
func (fl *blobFlight) recycleLocked(c []byte) {
	if fl.dropping > 0 {
		return
	}
	c = c[:0]
	shareChunkPool.Put(&c)
}

// fileSink writes the fetch to its cache file and publishes each write.
// When the file cannot take a write (a full or failing disk), the rest
// of the fetch goes to memory: a broken cache costs the blob its place
// in the cache, never its pulls.
type fileSink struct {
	fl  *blobFlight
	ctx context.Context
	mem *memorySink
	// upstream and digest name the blob in the log line.
	upstream string
	digest   v1.Hash
}

func (s *fileSink) Write(b []byte) (int, error) {
	if s.mem != nil {
		return s.mem.Write(b)
	}
	fl := s.fl
	n, err := fl.file.Write(b)
	fl.mu.Lock()
	fl.written += int64(n)
	end := fl.written
	if err != nil {
		fl.fileFailed, fl.fileEnd, fl.base = true, end, end
	}
	fl.broadcastLocked()
	fl.mu.Unlock()
	if err == nil {
		return n, nil
	}
	// The file's readers keep their handles on it; removing its name now
	// gives its room back to the cache.
	fl.file.Abort()
	fields := []zap.Field{zap.String("upstream", s.upstream), zap.String("digest", s.digest.String()), zap.Int64("bytes_in_file", end), zap.Error(err)}
	if errors.Is(err, ErrBlobCacheFull) {
		// No room left for the rest (the disk filled from elsewhere) is
		// a refusal the cache counts, as at Create, not a failure.
		if fl.f.roomLog.allow(time.Now(), time.Minute) {
			fl.f.p.log.Warn("blob cache: no room left for the rest of a blob; it is served from memory without caching it", fields...)
		}
	} else {
		fl.f.cacheErrors.WithLabelValues("write").Inc()
		fl.f.logCacheError("blob cache: cannot write a blob; it is served from memory without caching it", fields...)
	}
	s.mem = &memorySink{fl: fl, ctx: s.ctx}
	m, err := s.mem.Write(b[n:])
	return n + m, err
}

// memorySink appends the fetch to the flight's chunks. When the fastest
// reader is the buffer ahead of the slowest (or the budget has no room
// beyond two chunks) it waits for the slowest; one that has not moved for
// the stall grace is dropped.
type memorySink struct {
	fl  *blobFlight
	ctx context.Context
}

func (s *memorySink) Write(b []byte) (int, error) {
	fl, f := s.fl, s.fl.f
	grace := f.p.opts.clientStallGrace
	if grace <= 0 {
		grace = DefaultClientStallGrace
	}
	total := 0
	for len(b) > 0 {
		fl.mu.Lock()
		var tail []byte
		if k := len(fl.chunks); k > 0 && len(fl.chunks[k-1]) < cap(fl.chunks[k-1]) {
			tail = fl.chunks[k-1]
		} else {
			held := int64(len(fl.chunks)) * shareChunk
			if held < 2*shareChunk || (held+shareChunk <= f.buffer && f.tryAcquireUnlessMin(held)) {
				if held < 2*shareChunk {
					f.used.Add(shareChunk)
				}
				tail = (*shareChunkPool.Get().(*[]byte))[:0]
				fl.chunks = append(fl.chunks, tail)
				fl.waitSince = time.Time{}
			}
		}
		if tail == nil {
			now := time.Now()
			if m := fl.minPosLocked(); fl.waitSince.IsZero() || m != fl.waitMin {
				fl.waitMin, fl.waitSince = m, now
			} else if now.Sub(fl.waitSince) >= grace {
				for rd := range fl.readers {
					if rd.pos == m {
						rd.dropped = true
						delete(fl.readers, rd)
						fl.dropping++
						f.dropped.Inc()
					}
				}
				fl.waitSince = time.Time{}
				fl.freeLocked()
				fl.broadcastLocked()
				unread := len(fl.readers) == 0
				fl.mu.Unlock()
				if unread && f.abandonUnread(fl) {
					return total, context.Canceled
				}
				continue
			}
			wait := grace - now.Sub(fl.waitSince)
			fl.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-fl.space:
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return total, s.ctx.Err()
			}
			t.Stop()
			continue
		}
		k := min(len(b), cap(tail)-len(tail))
		fl.chunks[len(fl.chunks)-1] = append(tail, b[:k]...)
		fl.written += int64(k)
		b, total = b[k:], total+k
		fl.broadcastLocked()
		fl.mu.Unlock()
	}
	return total, nil
}

// tryAcquireUnlessMin takes a chunk from the budget for a flight that
// already holds its two free chunks.
func (f *blobFetches) tryAcquireUnlessMin(held int64) bool {
	return held >= 2*shareChunk && f.tryAcquire(shareChunk)
}

// blobFileOpener is a cache file being written that can be opened again
// for one reader (cache/blobs.Writer).
type blobFileOpener interface {
	OpenReader() (*os.File, error)
}

// fileReader opens the fetch's cache file for r when r's answer can be
// sent from it: a plain-HTTP connection (the listener's clientConn sends
// files with sendfile(2) or copies them, as ServeConfig.Sendfile says;
// TLS cannot) and a file that can be opened again. Otherwise it returns nil and the reader copies through a
// buffer, as a reader of a memory fetch does.
func (fl *blobFlight) fileReader(r *http.Request) *os.File {
	o, ok := fl.file.(blobFileOpener)
	if !ok || r.TLS != nil {
		return nil
	}
	f, err := o.OpenReader()
	if err != nil {
		return nil
	}
	return f
}

// sendTo is readTo for a reader of the cache file that sends what the
// fetch has written with w's ReadFrom, so net/http passes the file to the
// connection's ReadFrom and the kernel copies it: the many readers of a
// herd cost no copy through user space each. f is the reader's own handle
// on the file; sendTo closes it.
func (fl *blobFlight) sendTo(ctx context.Context, rd *flightReader, f *os.File, w io.ReaderFrom, cw *clientWriter) (int64, error) {
	defer f.Close()
	var sent int64
	for {
		n, fromFile, err := fl.wait(ctx, rd)
		if err != nil || n == 0 {
			return sent, err
		}
		if !fromFile {
			// The file failed; the rest is in memory.
			m, err := fl.readTo(ctx, rd, cw)
			return sent + m, err
		}
		m, err := w.ReadFrom(&io.LimitedReader{R: f, N: n})
		sent += m
		fl.advance(rd, m)
		if err == nil && m < n {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			if cw.err == nil {
				cw.err = err
			}
			return sent, err
		}
	}
}

// readTo copies the blob to w as the fetch produces it. It returns nil
// once all size bytes are written: the fetch releases a blob's last bytes
// only after they matched the digest.
func (fl *blobFlight) readTo(ctx context.Context, rd *flightReader, w io.Writer) (int64, error) {
	var buf []byte
	if fl.file != nil {
		bp := fileReadPool.Get().(*[]byte)
		defer fileReadPool.Put(bp)
		buf = *bp
	}
	var sent int64
	for {
		n, fromFile, err := fl.wait(ctx, rd)
		if err != nil || n == 0 {
			return sent, err
		}
		// rd.pos moves only once a write from it has returned
		// (advance); the chunk it is in stays until every reader has
		// passed it.
		var data []byte
		if fromFile {
			data = buf[:min(int64(len(buf)), n)]
			if k, err := fl.file.ReadAt(data, rd.pos); err != nil && !(err == io.EOF && k == len(data)) {
				return sent, fmt.Errorf("reading the blob cache file: %w", err)
			}
		} else {
			fl.mu.Lock()
			c := fl.chunks[(rd.pos-fl.base)/shareChunk]
			data = c[(rd.pos-fl.base)%shareChunk:]
			fl.mu.Unlock()
		}
		k, err := w.Write(data)
		sent += int64(k)
		if err != nil {
			return sent, err
		}
		fl.advance(rd, int64(k))
	}
}

// wait blocks until rd can go on: it returns how many bytes past rd.pos
// the fetch has released and whether they are to be read from the cache
// file (else from the memory chunks), or 0 and nil once rd has them all.
// The fetch's failure, rd dropped for being too slow and ctx ending are
// errors.
func (fl *blobFlight) wait(ctx context.Context, rd *flightReader) (n int64, fromFile bool, err error) {
	for {
		fl.mu.Lock()
		switch {
		case rd.dropped:
			fl.mu.Unlock()
			return 0, false, errDroppedReader
		case rd.pos == fl.size && (fl.size > 0 || fl.finished && fl.err == nil):
			// The last bytes are released only once they matched, so
			// reaching the size is success; an empty blob has no last
			// bytes, and only the finished fetch has checked it.
			fl.mu.Unlock()
			return 0, false, nil
		case rd.pos < fl.written:
			n := fl.written - rd.pos
			fromFile := fl.file != nil && (!fl.fileFailed || rd.pos < fl.fileEnd)
			if fromFile && fl.fileFailed {
				n = min(n, fl.fileEnd-rd.pos)
			}
			fl.mu.Unlock()
			return n, fromFile, nil
		case fl.finished:
			err := fl.err
			fl.mu.Unlock()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, false, err
		}
		ch := fl.changed
		fl.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, false, ctx.Err()
		}
	}
}

// advance moves rd past k bytes it has sent. Where the fetch is in
// memory chunks, that may free a chunk and let a waiting writer go on.
func (fl *blobFlight) advance(rd *flightReader, k int64) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	rd.pos += k
	if fl.file == nil || fl.fileFailed {
		fl.freeLocked()
		select {
		case fl.space <- struct{}{}:
		default:
		}
	}
}
