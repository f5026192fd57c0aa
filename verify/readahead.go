package verify

import (
	"context"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// EvidenceFanout is how many evidence reads one verification makes ahead at
// once: the referrers list, the fallback tag and the .sig and .att tags
// of a place. A cold verification is mostly upstream round trips; asking
// every place at once turns five trips in a row into two.
const EvidenceFanout = 4

// readAhead makes a run's evidence reads concurrently while the run still
// takes them one by one, in the order it would without it. The run asks its
// Fetcher (an aheadFetcher) as before; a read made ahead answers from
// what was already fetched. So everything the run decides (what it
// charges to the budget and when it stops, which evidence counts, which
// places a denial names) is what it would have decided reading in order:
// the verdict cannot depend on which read finished first. A read ahead
// the run never takes is dropped when the run's discovery ends.
//
// What reading ahead may cost is bounded: per place, the referrers list
// and three tags, at most EvidenceFanout of them in flight at once
// besides the run's own read; each first
// reserves its declared size (a tag: the evidence manifest limit) in the
// budget, next to what the run has charged, so reads ahead never hold
// more than the total, and a read that does not fit is not made ahead.
// What they list is read only by the run (see place).
type readAhead struct {
	r *run
	// budget holds the reservations; nil for reads ahead of any run
	// (Engine.ReadAhead), which are a fixed few.
	budget *budget
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	slots  chan struct{}

	mu      sync.Mutex
	pending map[aheadKey]*aheadRead
	// skipped holds, per place, the tags that place left out because the
	// place did not need them last time (tagMemory). Only the run's own
	// goroutine touches it.
	skipped map[*location]tagNeed
}

type aheadKind uint8

const (
	aheadReferrers aheadKind = iota
	aheadManifest
)

type aheadKey struct {
	loc  *location
	kind aheadKind
	ref  string // tag or digest
}

// aheadRead is one read made ahead; its fields are set before done is
// closed.
type aheadRead struct {
	done    chan struct{}
	reserve int64
	idx     *v1.IndexManifest
	m       Manifest
	err     error
}

// startReadAhead wraps the run's places' Fetchers for reading ahead. The
// returned stop ends the reads still going and waits for them.
func (r *run) startReadAhead(ctx context.Context) (stop func()) {
	ra := &readAhead{r: r, budget: &r.budget, slots: make(chan struct{}, EvidenceFanout), pending: map[aheadKey]*aheadRead{}}
	ra.ctx, ra.cancel = context.WithCancel(ctx)
	r.ahead = ra
	for _, l := range r.locs {
		l.f = &aheadFetcher{ra: ra, loc: l, f: l.f}
	}
	return func() {
		ra.cancel()
		ra.wg.Wait()
		r.ahead = nil
		for _, l := range r.locs {
			if af, ok := l.f.(*aheadFetcher); ok {
				l.f = af.f
			}
		}
	}
}

// start begins one read ahead unless it was begun already or its
// reservation does not fit. fetch runs holding a slot.
func (ra *readAhead) start(key aheadKey, reserve int64, fetch func(ctx context.Context, p *aheadRead)) {
	if ra.ctx.Err() != nil {
		return
	}
	ra.mu.Lock()
	if _, ok := ra.pending[key]; ok {
		ra.mu.Unlock()
		return
	}
	if ra.budget != nil && !ra.budget.reserve(reserve) {
		ra.mu.Unlock()
		return
	}
	p := &aheadRead{done: make(chan struct{}), reserve: reserve}
	ra.pending[key] = p
	ra.mu.Unlock()
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		select {
		case ra.slots <- struct{}{}:
			fetch(ra.ctx, p)
			<-ra.slots
		case <-ra.ctx.Done():
			p.err = ra.ctx.Err()
		}
		close(p.done)
	}()
}

// take hands a read made ahead to the run, once: its reservation is
// returned, and the run charges what it read like any read of its own.
func (ra *readAhead) take(ctx context.Context, key aheadKey) (*aheadRead, bool, error) {
	ra.mu.Lock()
	p, ok := ra.pending[key]
	if ok {
		delete(ra.pending, key)
	}
	ra.mu.Unlock()
	if !ok {
		return nil, false, nil
	}
	if ra.budget != nil {
		ra.budget.release(p.reserve)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	if p.err != nil && ra.ctx.Err() != nil && ctx.Err() == nil {
		// Dropped before the run asked: the run reads it itself.
		return nil, false, nil
	}
	return p, true, nil
}

// place starts reading a place ahead: its referrers, its fallback tag,
// and the .sig and .att tags when the run may still need them; nothing
// where the run reads the .sig tag first (run.sigFirst). What
// they list is read by the run alone, one at a time: which referrer it
// opens depends on what the ones before held, and one it would not open
// (a bomb listed after a valid signature) must not be read at all; and
// a tag's layers are read ahead by nobody, since the run reaches a tag
// as soon as it is in unless a referrer already decided, and then they
// are not needed.
func (ra *readAhead) place(l *location) {
	af, ok := l.f.(*aheadFetcher)
	if !ok {
		return
	}
	r := ra.r
	if r.sigFirst(l) {
		// The run reads the .sig tag first and at once; the index only
		// if the tag does not decide, so it is not read ahead of that.
		ra.leaveOut(l, needIndex)
		return
	}
	want := needIndex
	if r.needSignatures() {
		want |= needSig
	}
	if r.needAttestations() {
		want |= needAtt
	}
	if skip := r.e.tags.skip(l.upstream, l.repo, want); skip != 0 {
		ra.leaveOut(l, skip)
		want &^= skip
	}
	ra.startReferrers(l, af.f, r.s.Digest, want)
	for _, tag := range aheadTags(r.s.Digest, want) {
		ra.start(aheadKey{l, aheadManifest, tag}, r.manifestLimit(), func(ctx context.Context, p *aheadRead) {
			p.m, p.err = af.f.Manifest(ctx, l.repo, tag)
		})
	}
}

// leaveOut records the reads the place l leaves out of reading ahead,
// for tagsRead to count.
func (ra *readAhead) leaveOut(l *location, skip tagNeed) {
	if ra.skipped == nil {
		ra.skipped = map[*location]tagNeed{}
	}
	ra.skipped[l] |= skip
}

// startReferrers reads the referrers list of digest at l ahead when want
// has the index.
func (ra *readAhead) startReferrers(l *location, f Fetcher, digest v1.Hash, want tagNeed) {
	if want&needIndex == 0 {
		return
	}
	ra.start(aheadKey{l, aheadReferrers, digest.String()}, 0, func(ctx context.Context, p *aheadRead) {
		p.idx, p.err = f.Referrers(ctx, l.repo, digest)
	})
}

// aheadTags are the tags of digest read ahead: its fallback index and the
// cosign tags, as want names them.
func aheadTags(digest v1.Hash, want tagNeed) []string {
	fallback := "sha256-" + digest.Hex
	var tags []string
	if want&needIndex != 0 {
		tags = append(tags, fallback)
	}
	if want&needSig != 0 {
		tags = append(tags, fallback+".sig")
	}
	if want&needAtt != 0 {
		tags = append(tags, fallback+".att")
	}
	return tags
}

func isSHA256(h v1.Hash) bool { return h.Algorithm == "sha256" && len(h.Hex) == 64 }

// bundleLayer is a referrer manifest's sigstore bundle layer, if it has
// one.
func bundleLayer(man *v1.Manifest) *v1.Descriptor {
	for i := range man.Layers {
		if strings.HasPrefix(string(man.Layers[i].MediaType), mediaTypeBundlePrefix) {
			return &man.Layers[i]
		}
	}
	return nil
}

// aheadFetcher is a place's Fetcher during discovery: a read made ahead
// answers from what it fetched, anything else is asked of the upstream.
type aheadFetcher struct {
	ra  *readAhead
	loc *location
	f   Fetcher
}

func (af *aheadFetcher) Referrers(ctx context.Context, repo string, digest v1.Hash) (*v1.IndexManifest, error) {
	if repo == af.loc.repo {
		if p, ok, err := af.ra.take(ctx, aheadKey{af.loc, aheadReferrers, digest.String()}); err != nil || ok {
			if err != nil {
				return nil, err
			}
			return p.idx, p.err
		}
	}
	return af.f.Referrers(ctx, repo, digest)
}

func (af *aheadFetcher) Manifest(ctx context.Context, repo, ref string) (Manifest, error) {
	if repo == af.loc.repo {
		if p, ok, err := af.ra.take(ctx, aheadKey{af.loc, aheadManifest, ref}); err != nil || ok {
			if err != nil {
				return Manifest{}, err
			}
			return p.m, p.err
		}
	}
	return af.f.Manifest(ctx, repo, ref)
}

// Blob is never read ahead: the run reads a tag's layers as soon as it
// has the tag.
func (af *aheadFetcher) Blob(ctx context.Context, repo string, digest v1.Hash, limit int64) ([]byte, error) {
	return af.f.Blob(ctx, repo, digest, limit)
}

// ReadAhead starts reading the evidence of a subject known so far only by
// its coordinates, while the caller fetches its manifest, which Verify
// needs first (its artifact type picks the boundary): the referrers, the
// fallback tag and the .sig tag, and the .att tag when a boundary may ask
// for attestations, all in the subject's own repository; a .sig or .att
// tag the last verification there did not need is left out, and where
// that verification was decided by the .sig tag alone and no boundary
// may ask for attestations, only the .sig tag is read. It does so only
// when some boundary may match the subject and every one that may reads
// its signatures there; otherwise it returns f. The Fetcher it returns
// answers each of those reads once, from what was fetched, when Verify's
// run asks for it, and passes everything else to f; the run then decides
// as it would have without it. stop ends the reads still going and must
// be called once Verify has returned.
//
// These reads are a fixed few, each no larger than f lets a manifest be:
// what the run reads ahead anyway, asked one round trip sooner.
func (e *Engine) ReadAhead(ctx context.Context, upstream, repo string, digest v1.Hash, f Fetcher) (Fetcher, func()) {
	att, ok := e.aheadPlan(upstream, repo)
	if !ok || f == nil || !isSHA256(digest) {
		return f, func() {}
	}
	ra := &readAhead{slots: make(chan struct{}, EvidenceFanout), pending: map[aheadKey]*aheadRead{}}
	ra.ctx, ra.cancel = context.WithCancel(ctx)
	l := &location{upstream: upstream, repo: repo, f: f, own: true}
	af := &aheadFetcher{ra: ra, loc: l, f: f}
	want := needIndex | needSig
	if att {
		want |= needAtt
	}
	if !att && e.tags.sigFirst(upstream, repo) {
		// The run will read the .sig tag first (run.sigFirst).
		want = needSig
	} else {
		want &^= e.tags.skip(upstream, repo, want)
	}
	ra.startReferrers(l, f, digest, want)
	for _, tag := range aheadTags(digest, want) {
		ra.start(aheadKey{l, aheadManifest, tag}, 0, func(ctx context.Context, p *aheadRead) {
			p.m, p.err = f.Manifest(ctx, repo, tag)
		})
	}
	return af, func() {
		ra.cancel()
		ra.wg.Wait()
	}
}

// aheadPlan says whether a subject in upstream/repo is worth reading
// ahead of its manifest (some boundary may match it, and each that may
// reads its signatures in the subject's own repository) and whether its
// .att tag is (some such boundary has attestation rules or lineage).
func (e *Engine) aheadPlan(upstream, repo string) (att, ok bool) {
	for _, cb := range e.boundaries {
		if !cb.coversRepo(upstream, repo) {
			continue
		}
		if cb.Refused != "" || len(cb.evidence) == 0 || cb.evidence[0] != (EvidenceRepository{}) {
			return false, false
		}
		ok = true
		att = att || len(cb.rules) > 0 || cb.Lineage != nil
		if len(cb.ArtifactTypes) == 0 {
			// Every subject here falls in this one or an earlier one.
			break
		}
	}
	return att, ok
}
