package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

const (
	maxAcceptEntries = 32
	maxReasonLength  = 512
)

// coverEntry records that a child manifest is listed by a served index
// whose verdict was an enforce-mode allow in boundary.
type coverEntry struct {
	parent   string
	boundary string
	verdict  verify.Verdict
}

// flightResult is what one shared verification hands to every waiter.
type flightResult struct {
	verdict   verify.Verdict
	manifest  verify.Manifest
	cached    bool // the verdict came from the verdict cache
	fromCache bool // the bytes came from the manifest cache
}

// fetchError is a failure to obtain the manifest bytes for a digest.
type fetchError struct{ err error }

func (e *fetchError) Error() string { return "failed to fetch manifest: " + e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// verifyError is a failure of the Verifier to decide.
type verifyError struct{ err error }

func (e *verifyError) Error() string { return e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

// manifestReq carries one manifest request through the flow.
type manifestReq struct {
	u      *upstreamEntry
	repo   string
	ref    string
	client string
	// principal is the authenticated client, "" without client auth.
	principal string
	// lineage places the subject in a lineage walk; the zero value is a
	// root subject (a client's pull).
	lineage verify.LineageContext
	// v decides, from the request's start to its end (see SetVerifier).
	v Verifier
	// fresh skips the verdict cache and shares no flight with pulls (a
	// watch re-verifying on its schedule); the verdict still refreshes
	// the cache.
	fresh bool
}

// verdictSource says where a manifest decision's verdict came from.
type verdictSource uint8

const (
	sourceNone     verdictSource = iota // no verdict yet
	sourceVerified                      // decided by the Verifier for this request
	sourceCache                         // read from the verdict cache
	sourceCoverage                      // the verdict of a served index listing the manifest
	sourceEvidence                      // the verdict of the digest the manifest is evidence of
	sourceGating                        // a blob no allowed manifest references
)

// label names a source in the decisions metric.
func (s verdictSource) label() string {
	switch s {
	case sourceCache:
		return "cache"
	case sourceCoverage:
		return "coverage"
	case sourceEvidence:
		return "evidence"
	case sourceGating:
		return "blob-gating"
	default:
		return "verified"
	}
}

// manifestDecision is one manifest request's decision. serveManifest
// passes it through small steps, each filling in what the next needs:
// resolve the digest, find a verdict (coverage, cache or verification),
// check the bytes, decide, serve.
type manifestDecision struct {
	mr   manifestReq
	desc v1.Descriptor // Digest always; MediaType and Size when a tag was resolved by HEAD
	// digest is desc.Digest as a string, formatted once.
	digest      string
	fingerprint string
	key         string // the verdict key

	manifest     *verify.Manifest // the bytes, once in hand
	fromCache    bool             // they came from the manifest cache
	bytesChecked bool             // they are known to hash to the digest
	parsed       *parsedManifest  // set once the bytes have been checked and parsed

	verdict verify.Verdict
	source  verdictSource
	// sharedVerdict says the cached verdict was read from the shared
	// state: the replica that decided it has written through what it opens.
	sharedVerdict bool
	coveredBy     string // the index whose verdict this is, for sourceCoverage
	// evidenceOf is the digest this manifest is evidence of, for
	// sourceEvidence.
	evidenceOf string
}

func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, req apiRequest, st *reqState) error {
	if p.serveSummaryManifest(w, r, u, repo, req) {
		return nil
	}
	ctx := r.Context()
	mr := manifestReq{u: u, repo: repo, ref: req.ref, client: r.RemoteAddr, principal: PrincipalFrom(r.Context()).String(), v: p.currentVerifier()}
	d, err := p.resolveManifest(ctx, mr, req, r)
	if err != nil {
		return err
	}
	st.digest = d.digest
	if err := p.decideManifest(ctx, d, req); err != nil {
		return err
	}
	if err := p.applyRevocations(ctx, d); err != nil {
		return err
	}
	if err := p.loadBytes(ctx, d, r.Method == http.MethodGet); err != nil {
		return err
	}
	if err := p.checkBytes(d); err != nil {
		return err
	}
	p.decide(d)
	if !d.verdict.Served() {
		return deniedError(d.mr, d.desc.Digest, d.verdict)
	}
	p.keep(d)
	p.track(d)
	p.writeManifest(w, r, d)
	return nil
}

// resolveManifest fixes the digest the request is about: the one asked
// for, or the one the upstream resolves the tag to.
func (p *Proxy) resolveManifest(ctx context.Context, mr manifestReq, req apiRequest, r *http.Request) (*manifestDecision, error) {
	d := &manifestDecision{mr: mr}
	if req.isTag {
		tctx, span := p.startSpan(ctx, spanResolveTag)
		desc, m, err := p.resolveTag(tctx, mr.u, mr.repo, req.ref, acceptList(r))
		endResolve(span, req.ref, desc, err)
		if err != nil {
			return nil, p.upstreamFailure(ctx, mr.u, err, CodeManifestUnknown, "resolve")
		}
		if _, perr := parseDigest(desc.Digest.String()); perr != nil {
			p.metrics.upstreamErrors.WithLabelValues(mr.u.name, "invalid").Inc()
			return nil, errorf(http.StatusBadGateway, CodeUnknown, "upstream %s resolved %q to an unusable digest", mr.u.name, req.ref)
		}
		d.desc, d.manifest = desc, m
		d.digest = digestString(d.desc.Digest)
	} else {
		// parseDigest accepted ref whole: it is the digest's string form.
		d.desc.Digest, d.digest = req.digest, req.ref
	}
	d.fingerprint = mr.v.FingerprintFor(mr.u.name, mr.repo)
	d.key = verdictKey(d.fingerprint, mr.u.name, mr.repo, d.desc.Digest)
	return d, nil
}

// decideManifest gives d its verdict (decideEvidence) and, when that is
// the denial of a manifest refused as evidence for its size, says so.
func (p *Proxy) decideManifest(ctx context.Context, d *manifestDecision, req apiRequest) error {
	if err := p.decideEvidence(ctx, d, req); err != nil {
		return err
	}
	if d.source == sourceEvidence || d.verdict.Allowed {
		return nil
	}
	// Refused as evidence for its size or its bytes, now or before: say
	// so.
	if p.evidenceRefused.c.Len() > 0 {
		if why, ok := p.evidenceRefused.get(evidenceKey(d)); ok {
			d.verdict.Reasons = append(slices.Clip(d.verdict.Reasons), why)
		}
	}
	return nil
}

// decideEvidence gives d its verdict: as evidence of an allowed digest
// when it is one, else its own. A request that may be for evidence
// (cosign's tags, a digest served as evidence before) is checked first, so
// that evidence is not verified as content it is not; any other manifest
// is checked once its own verdict is not an allow, with the bytes that
// verdict brought.
//
// Only a request by digest is served as evidence that way. A manifest
// fetched by any other tag keeps its own verdict: verifiers find evidence
// by digest (referrers) or by cosign's tags, while a tag a loader pulls,
// moved to a manifest shaped as evidence, would otherwise serve whatever
// bytes its layers claim, by their media types, to be evidence. It is
// still remembered as evidence, so that a verifier's fetch by digest is
// served whatever the tag's denial left in the verdict cache.
func (p *Proxy) decideEvidence(ctx context.Context, d *manifestDecision, req apiRequest) error {
	candidate := p.evidenceCandidate(d, req)
	if candidate {
		if ok, err := p.evidenceOf(ctx, d, req); err != nil || ok {
			return err
		}
	}
	if err := p.findVerdict(ctx, d); err != nil {
		return err
	}
	if candidate || d.verdict.Allowed || len(p.opts.evidenceTypes) == 0 {
		return nil
	}
	if d.manifest == nil {
		// A verdict decided before, without the bytes: by digest it stands
		// (evidence seen then is remembered, see evidenceCandidate); under
		// a tag, the memory says whether to tell why.
		if req.isTag && p.evidence.c.Len() > 0 {
			if subject, ok := p.evidence.get(evidenceKey(d)); ok {
				noteEvidenceTag(d, subject.String(), req)
			}
		}
		return nil
	}
	own, source := d.verdict, d.source
	ok, err := p.evidenceOf(ctx, d, req)
	if err != nil {
		return err
	}
	if ok && req.isTag {
		subject := d.evidenceOf
		d.verdict, d.source, d.evidenceOf = own, source, ""
		noteEvidenceTag(d, subject, req)
		return nil
	}
	if !ok {
		d.verdict, d.source = own, source
	}
	return nil
}

// noteEvidenceTag adds to d's denial why, being evidence of subject, it is
// not served as such under the tag req names.
func noteEvidenceTag(d *manifestDecision, subject string, req apiRequest) {
	d.verdict.Reasons = append(slices.Clip(d.verdict.Reasons), fmt.Sprintf(
		"evidence of %s is served only when fetched by digest or by cosign's tags, not by tag %q", subject, req.ref))
}

// findVerdict takes the verdict of an index covering the manifest, else
// the cached one, else has the manifest verified.
func (p *Proxy) findVerdict(ctx context.Context, d *manifestDecision) error {
	if err := p.covered(ctx, d); err != nil || d.source != sourceNone {
		return err
	}
	if p.cachedVerdict(d) {
		return nil
	}
	// Asked only here, after both local misses, so a warm pull never
	// waits on the shared state.
	if err := p.sharedCovered(ctx, d); err != nil || d.source != sourceNone {
		return err
	}
	return p.verifyManifest(ctx, d)
}

// covered gives d the verdict of a served index that lists it, when there
// is one and d, matched on its own repository and artifact type, falls in
// that index's boundary. Otherwise d is left to be decided on its own, so
// that an index allowed under one boundary never lets through a child that
// another boundary (say, one for models, asking for more evidence) would
// deny. Knowing the artifact type takes the child's bytes, which a covered
// child needs anyway: they are served and open its blobs.
func (p *Proxy) covered(ctx context.Context, d *manifestDecision) error {
	ce, ok := p.coverage.get(d.key)
	if !ok {
		return nil
	}
	return p.applyCoverage(ctx, d, ce)
}

// applyCoverage gives d the verdict of ce when d falls in ce's boundary.
func (p *Proxy) applyCoverage(ctx context.Context, d *manifestDecision, ce coverEntry) error {
	if err := p.fetchBytes(ctx, d); err != nil {
		return err
	}
	if err := p.checkDigest(d); err != nil {
		return err
	}
	pm, err := p.parse(d.manifest)
	if err != nil {
		// Decided on its own, which denies what does not parse.
		return nil
	}
	d.parsed = pm
	b, ok := d.mr.v.BoundaryName(d.mr.u.name, d.mr.repo, pm.artifactType)
	if ok && ce.boundary != "" && b == ce.boundary {
		d.verdict, d.source, d.coveredBy = ce.verdict, sourceCoverage, ce.parent
	}
	return nil
}

// cachedVerdict takes d's verdict from the verdict cache.
func (p *Proxy) cachedVerdict(d *manifestDecision) bool {
	vc := p.opts.verdicts
	if vc == nil {
		return false
	}
	v, ok, shared := p.lookupVerdict(d)
	if !ok {
		p.metrics.verdictMiss.Inc()
		return false
	}
	p.metrics.verdictHit.Inc()
	d.verdict, d.source, d.sharedVerdict = v, sourceCache, shared
	return true
}

// alongVerdicts is a verdict cache with a shared state behind it
// (cache/shared.Verdicts). On a miss in this replica's memory GetAlong
// reads the verdict and the manifest bytes under digest ("" for none) in
// one round trip, keeping the bytes in the manifest cache, where
// loadBytes finds them; shared says the verdict came from the shared
// state.
type alongVerdicts interface {
	GetAlong(key, digest string) (v verify.Verdict, ok, shared bool)
}

// lookupVerdict reads d's verdict. A warm pull of a digest another
// replica decided thus waits on one Redis round trip, not two: the bytes
// a served answer needs come with the verdict.
func (p *Proxy) lookupVerdict(d *manifestDecision) (verify.Verdict, bool, bool) {
	vc := p.opts.verdicts
	if sv, ok := vc.(alongVerdicts); ok {
		digest := ""
		if d.manifest == nil {
			digest = d.digest
		}
		return sv.GetAlong(d.key, digest)
	}
	v, ok := vc.Get(d.key)
	return v, ok, false
}

// verifyManifest has d decided by the Verifier, shared with every
// concurrent request for the same key. A failure to decide fails closed.
func (p *Proxy) verifyManifest(ctx context.Context, d *manifestDecision) error {
	res, err := p.verifyShared(ctx, d.mr, d.key, d.desc.Digest, d.manifest)
	if err != nil {
		var oe *overloadError
		if errors.As(err, &oe) {
			return p.overloaded(d.mr, d.desc.Digest, oe)
		}
		var fe *fetchError
		if errors.As(err, &fe) {
			return p.fetchFailure(ctx, d.mr, d.desc.Digest, fe.err)
		}
		var ve *verifyError
		if errors.As(err, &ve) {
			return p.verificationFailure(d.mr, d.desc.Digest, ve.err)
		}
		if ctx.Err() != nil {
			return clientGone(ctx)
		}
		return err
	}
	d.verdict, d.source = res.verdict, sourceVerified
	if res.cached {
		d.source = sourceCache
	}
	// The flight's bytes may be another request's: they are checked again
	// unless they came from the manifest cache.
	d.manifest, d.fromCache, d.bytesChecked, d.parsed = &res.manifest, res.fromCache, res.fromCache, nil
	return nil
}

// loadBytes brings the bytes a served answer needs and does not have yet:
// a GET's body, and a HEAD's Content-Type and Content-Length when the tag
// resolution gave none. The manifest cache is always asked, since bytes in
// hand also open the manifest's blobs; the upstream only when needed.
func (p *Proxy) loadBytes(ctx context.Context, d *manifestDecision, get bool) error {
	if d.manifest != nil || !d.verdict.Served() {
		return nil
	}
	if p.fromManifestCache(d) || (!get && d.desc.Size > 0) {
		return nil
	}
	return p.fetchBytes(ctx, d)
}

// fetchBytes makes sure d has its bytes: from the manifest cache, else from
// the upstream by digest.
func (p *Proxy) fetchBytes(ctx context.Context, d *manifestDecision) error {
	if d.manifest != nil || p.fromManifestCache(d) {
		return nil
	}
	// Pulls that need the same bytes at once share one upstream GET: a
	// replica that reads a new digest's verdict from shared state has
	// every pull of it arriving meanwhile miss the manifest cache. Only
	// pulls share it; a verification fetches on its own (a watch must not
	// wait on a pull's request).
	fetch := func(fctx context.Context) (manifestFetch, error) {
		m, fromCache, err := p.manifestBytes(fctx, d.mr.u, d.mr.repo, d.desc.Digest, nil)
		return manifestFetch{m: m, fromCache: fromCache}, err
	}
	var (
		f   manifestFetch
		err error
	)
	if d.mr.fresh {
		f, err = fetch(ctx)
	} else {
		f, err = p.manifestFetches.do(ctx, d.mr.u.name+"\x00"+d.mr.repo+"\x00"+d.digest, fetch)
	}
	if err != nil {
		return p.fetchFailure(ctx, d.mr, d.desc.Digest, err)
	}
	// Every waiter gets the same bytes; they are only read.
	m := f.m
	d.manifest, d.fromCache, d.bytesChecked = &m, f.fromCache, f.fromCache
	return nil
}

// manifestFetch is the outcome of a shared fetch of manifest bytes.
type manifestFetch struct {
	m         verify.Manifest
	fromCache bool
}

func (p *Proxy) fromManifestCache(d *manifestDecision) bool {
	mc := p.opts.manifests
	if mc == nil {
		return false
	}
	m, ok := mc.Get(d.digest)
	if !ok || m.Digest != d.desc.Digest {
		return false
	}
	// The cache only holds bytes checked when they were added.
	d.manifest, d.fromCache, d.bytesChecked = &m, true, true
	return true
}

// checkBytes runs right before a served manifest is written: its bytes must
// hash to the digest, and they are parsed for the blobs and children they
// open.
func (p *Proxy) checkBytes(d *manifestDecision) error {
	if d.manifest == nil || !d.verdict.Served() {
		return nil
	}
	if err := p.checkDigest(d); err != nil {
		return err
	}
	if d.parsed != nil {
		return nil
	}
	pm, err := p.parse(d.manifest)
	if err != nil {
		// The verdict is about the digest; bytes served under another
		// media type than the verified ones may still not parse.
		d.verdict = malformedVerdict(d.desc.Digest, err)
		return nil
	}
	d.parsed = pm
	return nil
}

// checkDigest hashes bytes that did not come from the manifest cache.
// The upstream client has already checked them; should that promise ever
// break, nothing is served and the refusal is recorded like any other
// decision. It is a 403, not a 5xx: a runtime answered 5xx tries the next
// mirror or the origin, around the proxy.
func (p *Proxy) checkDigest(d *manifestDecision) error {
	if d.bytesChecked {
		return nil
	}
	if !digestMatches(d.desc.Digest, d.manifest.Bytes) {
		p.metrics.verificationErrors.WithLabelValues("digest").Inc()
		p.log.Error("manifest bytes do not match their digest", zap.String("digest", d.digest),
			zap.String("upstream", d.mr.u.name), zap.String("repository", d.mr.repo))
		return p.failClosed(d.mr, d.desc.Digest, "digest", fmt.Errorf("manifest bytes do not match %s", d.digest))
	}
	d.bytesChecked = true
	return nil
}

// keep remembers what a served manifest vouches for and keeps its bytes
// for the next pull.
func (p *Proxy) keep(d *manifestDecision) {
	if d.parsed == nil {
		return
	}
	p.remember(d)
	if p.opts.manifests != nil && !d.fromCache {
		p.opts.manifests.Add(*d.manifest)
	}
}

func (p *Proxy) writeManifest(w http.ResponseWriter, r *http.Request, d *manifestDecision) {
	h := w.Header()
	// One backing array for the four values, each a full slice of its
	// own so that an Add to one key cannot write into the next.
	v := make([]string, 4)
	v[0], v[1] = d.digest, `"`+d.digest+`"`
	m := d.manifest
	if m != nil {
		mt := m.MediaType
		if d.parsed != nil {
			mt = d.parsed.mediaType
		}
		v[2], v[3] = string(mt), strconv.Itoa(len(m.Bytes))
	} else {
		v[2], v[3] = string(d.desc.MediaType), strconv.FormatInt(d.desc.Size, 10)
	}
	h["Docker-Content-Digest"] = v[0:1:1]
	h["Etag"] = v[1:2:2]
	h["Content-Type"] = v[2:3:3]
	h["Content-Length"] = v[3:4:4]
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Bytes)
	}
}

// parse parses a manifest once per digest and media type; the parsed form
// of content-addressed bytes never changes.
func (p *Proxy) parse(m *verify.Manifest) (*parsedManifest, error) {
	key := m.Digest.Algorithm + ":" + m.Digest.Hex + " " + string(m.MediaType)
	if pm, ok := p.parsed.get(key); ok {
		return pm, nil
	}
	pm, err := parseManifest(m.MediaType, m.Bytes)
	if err != nil {
		return nil, err
	}
	p.parsed.add(key, pm, len(m.Bytes))
	return pm, nil
}

// resolveTag asks the upstream for the tag's digest, unless a fresh
// mapping is cached. The Accept list is part of the key: a tag can name
// an index for one client and a single manifest for another.
func (p *Proxy) resolveTag(ctx context.Context, u *upstreamEntry, repo, tag string, accept []string) (v1.Descriptor, *verify.Manifest, error) {
	var key string
	if p.tags != nil {
		key = strings.Join([]string{u.name, repo, tag, strings.Join(accept, ",")}, "\x00")
		if d, ok := p.tags.get(key); ok {
			return d, nil, nil
		}
	}
	d, m, err := u.client.Resolve(ctx, repo, tag, accept)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	if m != nil && m.Digest != d.Digest {
		return v1.Descriptor{}, nil, fmt.Errorf("resolved manifest %s does not match descriptor %s", m.Digest, d.Digest)
	}
	if p.tags != nil {
		p.tags.add(key, d)
	}
	return d, m, nil
}

// verifyShared runs one verification per key however many requests ask
// for it. One client hanging up fails nobody else; when every client
// waiting for it has left, the verification is cancelled (see
// flightGroup), and what it was deciding is not cached.
func (p *Proxy) verifyShared(ctx context.Context, mr manifestReq, key string, digest v1.Hash, have *verify.Manifest) (flightResult, error) {
	fkey := key
	if mr.fresh {
		fkey = "fresh\x00" + key
	}
	return p.flights.do(ctx, fkey, func(fctx context.Context) (res flightResult, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				p.log.Error("verification panicked", zap.Any("panic", rec), zap.String("digest", digest.String()))
				res, err = flightResult{}, &verifyError{fmt.Errorf("verification panicked")}
			}
		}()
		// A request that missed the cache just before an earlier flight
		// finished finds its verdict here instead of verifying again, and
		// takes no slot for it.
		if vc := p.opts.verdicts; vc != nil && !mr.fresh {
			v, ok := vc.Get(key)
			if !ok {
				// Another replica may be verifying it: its verdict is
				// awaited, holding no slot, rather than verified again.
				var release func()
				release, v, ok = p.sharedTurn(fctx, key)
				defer release() // after the verdict is stored below
			}
			if ok {
				vctx, cancel := context.WithTimeout(fctx, p.opts.verifyTimeout)
				defer cancel()
				m, fromCache, err := p.manifestBytes(vctx, mr.u, mr.repo, digest, have)
				if err != nil {
					return flightResult{}, &fetchError{err}
				}
				return flightResult{verdict: v, manifest: m, cached: true, fromCache: fromCache}, nil
			}
		}
		// The slot covers fetching the manifest too, so a flood of unknown
		// digests costs at most as many upstream requests at once as there
		// are slots and queue places.
		release, err := p.slots.acquire(fctx)
		if err != nil {
			return flightResult{}, err
		}
		defer release()
		// The timeout starts with the slot: the wait for one has its own bound.
		vctx, cancel := context.WithTimeout(fctx, p.opts.verifyTimeout)
		defer cancel()
		vctx, stopAhead := p.readEvidenceAhead(vctx, mr, digest, have) // see evidenceahead.go
		defer stopAhead()
		m, fromCache, err := p.manifestBytes(vctx, mr.u, mr.repo, digest, have)
		if err != nil {
			return flightResult{}, &fetchError{err}
		}
		v, err := p.evaluate(vctx, mr, m)
		if err == nil {
			err = settled(vctx)
		}
		if err != nil {
			return flightResult{}, &verifyError{err}
		}
		if vc := p.opts.verdicts; vc != nil {
			vc.Add(key, v)
		}
		return flightResult{verdict: v, manifest: m, fromCache: fromCache}, nil
	})
}

// evaluate turns manifest bytes into a verdict. A manifest the proxy cannot
// parse is denied outright: it is never handed on as an allow.
func (p *Proxy) evaluate(ctx context.Context, mr manifestReq, m verify.Manifest) (verify.Verdict, error) {
	// Bytes that match their digest are parsed through the cache, so the
	// checks that follow (is a denied manifest evidence? which blobs does
	// a served one open?) do not parse them again: a 4 MiB manifest of
	// many keys takes 0.2 s to check. Other bytes are parsed apart, never
	// cached under a digest they are not; they are refused before
	// anything is served.
	var pm *parsedManifest
	var err error
	if digestMatches(m.Digest, m.Bytes) {
		pm, err = p.parse(&m)
	} else {
		pm, err = parseManifest(m.MediaType, m.Bytes)
	}
	if err != nil {
		return malformedVerdict(m.Digest, err), nil
	}
	subject := verify.Subject{
		Upstream:     mr.u.name,
		Repository:   mr.repo,
		Reference:    mr.ref,
		Digest:       m.Digest,
		MediaType:    pm.mediaType,
		ArtifactType: pm.artifactType,
		Manifest:     m.Bytes,
		Lineage:      mr.lineage,
	}
	// Every subject, root or dependency, can have its own dependencies
	// followed, and always through the proxy: routing, verdict cache and
	// shared verification stay the same at every level.
	subject.Lineage.Dependencies = p
	// Evidence kept on another upstream is read through that upstream's
	// client, found by name in the router: never dialled by name.
	subject.Fetchers = p.router
	subject.Revoked = p.signerRevocations()
	subject.RegistryNames = mr.u.registryNames
	p.metrics.verifications.Inc()
	vctx, span := p.startVerify(ctx, mr, m.Digest)
	v, err := mr.v.Verify(withVerifier(vctx, mr.v), subject, evidenceFetcher(vctx, mr, m.Digest))
	endVerify(span, v, err)
	if err != nil {
		return verify.Verdict{}, err
	}
	if n := v.Reads.PredictedLayers; n > 0 {
		p.metrics.signatureLayers.WithLabelValues("hit").Add(float64(n))
	}
	if n := v.Reads.UnpredictedLayers; n > 0 {
		p.metrics.signatureLayers.WithLabelValues("miss").Add(float64(n))
	}
	if n := v.Reads.SavedTags; n > 0 {
		p.metrics.evidenceTags.WithLabelValues("saved").Add(float64(n))
	}
	if n := v.Reads.MissedTags; n > 0 {
		p.metrics.evidenceTags.WithLabelValues("missed").Add(float64(n))
	}
	if v.Digest == "" {
		v.Digest = m.Digest.String()
	} else if v.Digest != m.Digest.String() {
		return verify.Verdict{}, fmt.Errorf("verifier answered for %s instead of %s", v.Digest, m.Digest)
	}
	if v.Limit != "" && !v.Allowed {
		// Counted once per verification, not per request the cached
		// denial answers: a repository stuffed with evidence is an
		// upstream problem an operator should see.
		p.metrics.limitExceeded.WithLabelValues(v.Limit).Inc()
		p.log.Warn("verification stopped at a limit", zap.String("upstream", mr.u.name), zap.String("repository", mr.repo),
			zap.String("digest", m.Digest.String()), zap.String("limit", v.Limit), zap.Strings("reasons", v.Reasons))
	}
	return p.revokedVerdict(v), nil
}

func malformedVerdict(d v1.Hash, err error) verify.Verdict {
	return verify.Verdict{
		Allowed:   false,
		Mode:      verify.ModeEnforce,
		Digest:    d.String(),
		Reasons:   []string{"malformed manifest: " + truncate(err.Error(), maxReasonLength)},
		CheckedAt: time.Now(),
	}
}

// manifestBytes returns the checked bytes of digest: those already in hand,
// the manifest cache's, or the upstream's fetched by digest.
func (p *Proxy) manifestBytes(ctx context.Context, u *upstreamEntry, repo string, digest v1.Hash, have *verify.Manifest) (m verify.Manifest, fromCache bool, err error) {
	if have != nil && have.Digest == digest {
		return *have, false, nil
	}
	ds := digestString(digest)
	if mc := p.opts.manifests; mc != nil {
		if m, ok := mc.Get(ds); ok && m.Digest == digest {
			return m, true, nil
		}
	}
	m, err = u.manifests.GetManifest(ctx, repo, ds, nil)
	if err != nil {
		return verify.Manifest{}, false, err
	}
	// The upstream client hashed the body against the requested digest;
	// serveManifest hashes once more right before serving, so the bytes
	// are not hashed a third time here.
	if m.Digest != digest {
		return verify.Manifest{}, false, fmt.Errorf("upstream sent a manifest that does not match %s", digest)
	}
	return m, false, nil
}

// remember records what a served manifest vouches for: an index's children
// (see cover) and an image's blobs (blob gating).
func (p *Proxy) remember(d *manifestDecision) {
	p.shareServed(d)
	pm, u, repo := d.parsed, d.mr.u.name, d.mr.repo
	if pm.index {
		// A fallback index served as evidence lists referrers; each is
		// decided when fetched.
		if d.source != sourceEvidence {
			p.cover(d)
		}
		return
	}
	removed := p.blobs.removed.Load()
	if d.key != "" {
		if n, ok := p.blobsKept.get(d.key); ok && n == removed {
			return
		}
	}
	src := &grantSource{manifest: d.digest, verdict: d.verdict}
	p.blobs.add(blobKey(u, repo, pm.config.digest), blobGrant{size: pm.config.size, src: src})
	for _, l := range pm.layers {
		p.blobs.add(blobKey(u, repo, l.digest), blobGrant{size: l.size, src: src})
	}
	// Counted before adding: adds that evict anything, these included,
	// make the next pull add them again.
	if d.key != "" {
		p.blobsKept.add(d.key, removed)
	}
}

// cover lets the children an index lists be served on its verdict. Only an
// enforce-mode allow in a named boundary covers anything: a warn-mode
// verdict (allowed or not) would let a child skip its own would-be denial.
// Coverage is keyed like the verdict (policy and trust fingerprint,
// upstream, repository, digest) and ends when the verdict it rests on
// does, the coverage TTL after the verdict was decided.
func (p *Proxy) cover(d *manifestDecision) {
	v := d.verdict
	if !v.Allowed || v.Mode != verify.ModeEnforce || v.Boundary == "" {
		return
	}
	// addUntil caps the end at the cache's TTL from now.
	expires := coverageEnd(v, p.opts.coverageTTL, p.coverage.now())
	e := coverEntry{parent: d.digest, boundary: v.Boundary, verdict: v}
	for _, c := range d.parsed.children {
		p.coverage.addUntil(verdictKey(d.fingerprint, d.mr.u.name, d.mr.repo, c), e, expires)
	}
}

// decide reports a decision: audit event, metrics, drift and the ring.
func (p *Proxy) decide(md *manifestDecision) {
	v, mr := md.verdict, md.mr
	// A child served on its parent's verdict is covered, not a cache hit:
	// its own verdict was never looked up.
	cached := md.source == sourceCache
	decision := "deny"
	switch {
	case v.Allowed:
		decision = "allow"
	case v.Served():
		decision = "warn"
	}
	dk := mr.u.name + "\x00" + mr.repo + "\x00" + md.digest
	prev, seen := p.lastAllowed.Get(dk)
	drift := seen && prev && !v.Allowed
	if !seen || prev != v.Allowed {
		// Get already made a known entry the most recent; only a change
		// needs writing.
		p.lastAllowed.Add(dk, v.Allowed)
	}
	if drift {
		p.metrics.drift.WithLabelValues(v.Boundary).Inc()
	}
	mode := v.Mode
	if mode == "" {
		mode = verify.ModeEnforce
	}
	p.metrics.decision(v.Boundary, decision, string(mode), md.source)
	p.record(Decision{
		Time:       time.Now().UTC(),
		Client:     mr.client,
		Principal:  mr.principal,
		Upstream:   mr.u.name,
		Repository: mr.repo,
		Reference:  mr.ref,
		Digest:     md.digest,
		Boundary:   v.Boundary,
		Decision:   decision,
		Mode:       mode,
		Signers:    v.Signers,
		Reasons:    v.Reasons,
		Cached:     cached,
		CoveredBy:  md.coveredBy,
		EvidenceOf: md.evidenceOf,
		Drift:      drift,
	})
}

func (p *Proxy) record(d Decision) {
	if d.Kind == "" {
		d.Kind = KindManifest
	}
	p.note(d)
	p.boundaryCounts.add(d.Boundary, d.Decision)
	p.emitDecision(d)
}

// note keeps d in the ring and the audit log without alerting: a watch
// reports what it finds through its own events.
func (p *Proxy) note(d Decision) {
	p.decisions.add(d)
	level := zap.WarnLevel
	if d.Decision == "allow" && !d.Drift {
		level = zap.InfoLevel
	}
	// Check first: on the warm path allows are common and often filtered
	// out by the log level, so their fields are not built for nothing.
	ce := p.audit.Check(level, "decision")
	if ce == nil {
		return
	}
	ce.Write(
		zap.Time("time", d.Time),
		zap.String("kind", d.Kind),
		zap.String("client", d.Client),
		zap.String("principal", d.Principal),
		zap.String("upstream", d.Upstream),
		zap.String("repository", d.Repository),
		zap.String("reference", d.Reference),
		zap.String("digest", d.Digest),
		zap.String("boundary", d.Boundary),
		zap.String("decision", d.Decision),
		zap.String("mode", string(d.Mode)),
		zap.Any("signers", d.Signers),
		zap.Strings("reasons", d.Reasons),
		zap.Bool("cached", d.Cached),
		zap.String("covered_by", d.CoveredBy),
		zap.String("evidence_of", d.EvidenceOf),
		zap.Bool("drift", d.Drift),
	)
}

func deniedError(mr manifestReq, digest v1.Hash, v verify.Verdict) *Error {
	reasons := v.Reasons
	if len(reasons) == 0 {
		reasons = []string{"denied by policy"}
	}
	msg := fmt.Sprintf("denied: %s: %s", digest, strings.Join(reasons, "; "))
	if v.Boundary != "" {
		msg = fmt.Sprintf("denied by boundary %q: %s: %s", v.Boundary, digest, strings.Join(reasons, "; "))
	}
	return &Error{
		Status:  http.StatusForbidden,
		Code:    CodeDenied,
		Message: msg,
		Detail: map[string]any{
			"boundary":   v.Boundary,
			"digest":     digest.String(),
			"reference":  mr.ref,
			"upstream":   mr.u.name,
			"repository": mr.repo,
			"reasons":    reasons,
		},
	}
}

// verificationFailure fails closed: a failure to decide is answered like a
// denial so that a client never falls back to a route around the proxy,
// and it is not cached.
func (p *Proxy) verificationFailure(mr manifestReq, digest v1.Hash, err error) error {
	reason := "verifier"
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		reason = "timeout"
	case upstream.IsTransient(err):
		reason = "upstream"
	}
	p.metrics.verificationErrors.WithLabelValues(reason).Inc()
	p.log.Warn("verification failed", zap.String("digest", digest.String()), zap.String("reason", reason), zap.Error(err))
	return p.failClosed(mr, digest, reason, err)
}

// fetchFailure handles a failure to obtain the bytes of a known digest:
// absence and authorization answers are passed on, anything else fails
// closed like a verification failure.
func (p *Proxy) fetchFailure(ctx context.Context, mr manifestReq, digest v1.Hash, err error) error {
	if ctx.Err() != nil {
		return clientGone(ctx)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		switch ue.Status {
		case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
			return p.upstreamFailure(ctx, mr.u, err, CodeManifestUnknown, "fetch")
		}
	}
	kind := "invalid"
	if upstream.IsTransient(err) {
		kind = "unreachable"
	}
	p.metrics.upstreamErrors.WithLabelValues(mr.u.name, kind).Inc()
	p.metrics.verificationErrors.WithLabelValues("fetch").Inc()
	p.log.Warn("could not fetch manifest", zap.String("digest", digest.String()), zap.Error(err))
	return p.failClosed(mr, digest, "fetch", err)
}

func (p *Proxy) failClosed(mr manifestReq, digest v1.Hash, code string, err error) error {
	reason := "could not verify: " + truncate(err.Error(), maxReasonLength)
	p.record(Decision{
		Time:       time.Now().UTC(),
		Client:     mr.client,
		Principal:  mr.principal,
		Upstream:   mr.u.name,
		Repository: mr.repo,
		Reference:  mr.ref,
		Digest:     digest.String(),
		Decision:   "deny",
		Mode:       verify.ModeEnforce,
		Reasons:    []string{reason},
		FailClosed: true,
	})
	p.metrics.decision("", "deny", string(verify.ModeEnforce), sourceVerified)
	return &Error{
		Status:  http.StatusForbidden,
		Code:    CodeDenied,
		Message: fmt.Sprintf("could not verify %s (fail closed)", digest),
		Detail: map[string]any{
			"digest":      digest.String(),
			"reference":   mr.ref,
			"upstream":    mr.u.name,
			"repository":  mr.repo,
			"reason":      reason,
			"reason_code": code,
		},
	}
}

// upstreamFailure maps an upstream failure that happened before any content
// was fixed (or an authoritative answer about it) to the client's answer.
func (p *Proxy) upstreamFailure(ctx context.Context, u *upstreamEntry, err error, unknownCode, op string) error {
	if ctx.Err() != nil {
		return clientGone(ctx)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		switch {
		case ue.Status == http.StatusNotFound:
			p.metrics.upstreamErrors.WithLabelValues(u.name, "not_found").Inc()
			if validEnvelope(ue.Body) {
				return ue
			}
			return errorf(http.StatusNotFound, unknownCode, "not found at upstream %s", u.name)
		case ue.Status >= 500:
			p.metrics.upstreamErrors.WithLabelValues(u.name, "status_5xx").Inc()
			return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered %d", u.name, ue.Status)
		case ue.Status >= 400:
			p.metrics.upstreamErrors.WithLabelValues(u.name, "status_4xx").Inc()
			if validEnvelope(ue.Body) {
				return ue
			}
			return errorf(ue.Status, codeForStatus(ue.Status), "upstream %s answered %d", u.name, ue.Status)
		default:
			p.metrics.upstreamErrors.WithLabelValues(u.name, "status_other").Inc()
			return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered %d", u.name, ue.Status)
		}
	}
	var rr *upstream.RedirectRefusedError
	switch {
	case errors.As(err, &rr):
		p.metrics.upstreamErrors.WithLabelValues(u.name, "redirect_refused").Inc()
		p.log.Warn("upstream redirect refused", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s redirected to a disallowed address %s", u.name, rr.Addr)
	case errors.Is(err, upstream.ErrUpstreamStalled):
		p.metrics.upstreamErrors.WithLabelValues(u.name, "upstream_stalled").Inc()
		p.log.Warn("upstream stalled", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s stopped sending", u.name)
	case errors.Is(err, upstream.ErrHeadersTooLarge):
		p.metrics.upstreamErrors.WithLabelValues(u.name, "too_large").Inc()
		p.log.Warn("upstream response headers too large", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s sent response headers larger than limits.upstream_header_bytes", u.name)
	case errors.Is(err, upstream.ErrConnLimit):
		p.metrics.upstreamErrors.WithLabelValues(u.name, "conn_limit").Inc()
		p.log.Warn("upstream connection limit reached", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
		return errorf(http.StatusServiceUnavailable, CodeUnknown, "all connections to upstream %s are busy, retry later", u.name)
	}
	if upstream.IsTransient(err) {
		p.metrics.upstreamErrors.WithLabelValues(u.name, "unreachable").Inc()
		p.log.Warn("upstream unreachable", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s is unreachable", u.name)
	}
	p.metrics.upstreamErrors.WithLabelValues(u.name, "invalid").Inc()
	p.log.Warn("invalid upstream response", zap.String("upstream", u.name), zap.String("op", op), zap.Error(err))
	return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s sent an invalid response", u.name)
}

// clientGone is the answer when the client left first; it is only seen in
// logs and metrics.
func clientGone(ctx context.Context) error {
	return &Error{Status: 499, Code: CodeUnknown, Message: "client closed request: " + context.Cause(ctx).Error()}
}

// verdictKey scopes a verdict to the policy, the upstream, the repository
// and the digest: a verdict never carries over between repositories.
func verdictKey(fingerprint, upstreamName, repo string, d v1.Hash) string {
	// The hashed input is len:value for each of the four, built in one
	// buffer (on the stack for the usual lengths).
	var stack [512]byte
	b := stack[:0]
	for _, s := range [...]string{fingerprint, upstreamName, repo} {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	b = strconv.AppendInt(b, int64(len(d.Algorithm)+1+len(d.Hex)), 10)
	b = append(b, ':')
	b = append(b, d.Algorithm...)
	b = append(b, ':')
	b = append(b, d.Hex...)
	sum := sha256.Sum256(b)
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

func blobKey(upstreamName, repo string, d v1.Hash) string {
	return upstreamName + "\x00" + repo + "\x00" + d.Algorithm + ":" + d.Hex
}

// digestString is d.String() (algorithm:hex) without fmt.
func digestString(d v1.Hash) string { return d.Algorithm + ":" + d.Hex }

// acceptList splits the client's Accept headers, bounded.
func acceptList(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" || len(part) > 256 {
				continue
			}
			out = append(out, part)
			if len(out) == maxAcceptEntries {
				return out
			}
		}
	}
	return out
}
