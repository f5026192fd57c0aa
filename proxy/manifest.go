package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
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

// coverEntry records that a child manifest is listed by a served index.
type coverEntry struct {
	parent  string
	verdict verify.Verdict
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
	// lineage places the subject in a lineage walk; the zero value is a
	// root subject (a client's pull).
	lineage verify.LineageContext
}

func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, req apiRequest, st *reqState) error {
	ctx := r.Context()
	mr := manifestReq{u: u, repo: repo, ref: req.ref, client: r.RemoteAddr}
	accept := acceptList(r)

	var desc v1.Descriptor
	var have *verify.Manifest
	if req.isTag {
		d, m, err := p.resolveTag(ctx, u, repo, req.ref, accept)
		if err != nil {
			return p.upstreamFailure(ctx, u, err, CodeManifestUnknown, "resolve")
		}
		if _, perr := parseDigest(d.Digest.String()); perr != nil {
			p.metrics.upstreamErrors.WithLabelValues(u.name, "invalid").Inc()
			return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s resolved %q to an unusable digest", u.name, req.ref)
		}
		desc, have = d, m
	} else {
		desc.Digest = req.digest
	}
	digest := desc.Digest
	st.digest = digest.String()
	key := verdictKey(p.verifier.Fingerprint(), u.name, repo, digest)

	var (
		verdict   verify.Verdict
		known     bool
		cached    bool
		coveredBy string
	)
	var mFromCache bool
	if ce, ok := p.coverage.get(key); ok {
		verdict, known, cached, coveredBy = ce.verdict, true, true, ce.parent
	} else if vc := p.opts.verdicts; vc != nil {
		if v, ok := vc.Get(key); ok {
			p.metrics.verdictCache.WithLabelValues("hit").Inc()
			verdict, known, cached = v, true, true
		} else {
			p.metrics.verdictCache.WithLabelValues("miss").Inc()
		}
	}

	var m *verify.Manifest
	if known {
		if have == nil && p.opts.manifests != nil {
			if cm, ok := p.opts.manifests.Get(digest.String()); ok && cm.Digest == digest {
				have, mFromCache = &cm, true
			}
		}
		m = have
		needBytes := r.Method == http.MethodGet || (m == nil && desc.Size <= 0) || coveredBy != ""
		if verdict.Served() && m == nil && needBytes {
			got, fromCache, err := p.manifestBytes(ctx, u, repo, digest, nil)
			if err != nil {
				return p.fetchFailure(ctx, mr, digest, err)
			}
			m, mFromCache = &got, fromCache
		}
	} else {
		res, err := p.verifyShared(ctx, mr, key, digest, have)
		if err != nil {
			var fe *fetchError
			if errors.As(err, &fe) {
				return p.fetchFailure(ctx, mr, digest, fe.err)
			}
			var ve *verifyError
			if errors.As(err, &ve) {
				return p.verificationFailure(mr, digest, ve.err)
			}
			if ctx.Err() != nil {
				return clientGone(ctx)
			}
			return err
		}
		verdict, cached, m, mFromCache = res.verdict, res.cached, &res.manifest, res.fromCache
	}

	var pm *parsedManifest
	if m != nil && verdict.Served() {
		// Bytes from the manifest cache were hashed when they were added;
		// anything else is re-checked here, right before it is served.
		if !mFromCache && !digestMatches(digest, m.Bytes) {
			// The caches and the upstream client promise checked bytes;
			// if that is ever broken, nothing is served.
			p.log.Error("manifest bytes do not match their digest", zap.String("digest", digest.String()))
			return errors.New("manifest digest mismatch")
		}
		parsed, err := p.parse(m)
		if err != nil {
			// Only reachable for content that was never verified on its
			// own (an index child): it is refused like any malformed one.
			verdict = malformedVerdict(digest, err)
		} else {
			pm = parsed
		}
	}

	p.decide(mr, digest, verdict, cached, coveredBy)
	if !verdict.Served() {
		return deniedError(mr, digest, verdict)
	}
	if pm != nil {
		p.remember(mr, digest, verdict, pm)
		if p.opts.manifests != nil && !mFromCache {
			p.opts.manifests.Add(*m)
		}
	}

	h := w.Header()
	h.Set("Docker-Content-Digest", digest.String())
	h.Set("ETag", `"`+digest.String()+`"`)
	if m != nil {
		mt := m.MediaType
		if pm != nil {
			mt = pm.mediaType
		}
		h.Set("Content-Type", string(mt))
		h.Set("Content-Length", strconv.Itoa(len(m.Bytes)))
	} else {
		h.Set("Content-Type", string(desc.MediaType))
		h.Set("Content-Length", strconv.FormatInt(desc.Size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Bytes)
	}
	return nil
}

// parse parses a manifest once per digest and media type; the parsed form
// of content-addressed bytes never changes.
func (p *Proxy) parse(m *verify.Manifest) (*parsedManifest, error) {
	key := m.Digest.String() + " " + string(m.MediaType)
	if pm, ok := p.parsed.Get(key); ok {
		return pm, nil
	}
	pm, err := parseManifest(m.MediaType, m.Bytes)
	if err != nil {
		return nil, err
	}
	p.parsed.Add(key, pm)
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
// for it. The work runs on a context detached from the first client so
// that client hanging up fails nobody else; each waiter still stops
// waiting when its own client leaves.
func (p *Proxy) verifyShared(ctx context.Context, mr manifestReq, key string, digest v1.Hash, have *verify.Manifest) (flightResult, error) {
	ch := p.flights.DoChan(key, func() (res any, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				p.log.Error("verification panicked", zap.Any("panic", rec), zap.String("digest", digest.String()))
				res, err = nil, &verifyError{fmt.Errorf("verification panicked")}
			}
		}()
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.verifyTimeout)
		defer cancel()
		// A request that missed the cache just before an earlier flight
		// finished finds its verdict here instead of verifying again.
		if vc := p.opts.verdicts; vc != nil {
			if v, ok := vc.Get(key); ok {
				m, fromCache, err := p.manifestBytes(vctx, mr.u, mr.repo, digest, have)
				if err != nil {
					return nil, &fetchError{err}
				}
				return flightResult{verdict: v, manifest: m, cached: true, fromCache: fromCache}, nil
			}
		}
		m, fromCache, err := p.manifestBytes(vctx, mr.u, mr.repo, digest, have)
		if err != nil {
			return nil, &fetchError{err}
		}
		v, err := p.evaluate(vctx, mr, m)
		if err != nil {
			return nil, &verifyError{err}
		}
		if vc := p.opts.verdicts; vc != nil {
			vc.Add(key, v)
		}
		return flightResult{verdict: v, manifest: m, fromCache: fromCache}, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return flightResult{}, r.Err
		}
		return r.Val.(flightResult), nil
	case <-ctx.Done():
		return flightResult{}, ctx.Err()
	}
}

// evaluate turns manifest bytes into a verdict. A manifest the proxy cannot
// parse is denied outright: it is never handed on as an allow.
func (p *Proxy) evaluate(ctx context.Context, mr manifestReq, m verify.Manifest) (verify.Verdict, error) {
	pm, err := parseManifest(m.MediaType, m.Bytes)
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
	p.metrics.verifications.Inc()
	v, err := p.verifier.Verify(ctx, subject, mr.u.client)
	if err != nil {
		return verify.Verdict{}, err
	}
	if v.Digest == "" {
		v.Digest = m.Digest.String()
	} else if v.Digest != m.Digest.String() {
		return verify.Verdict{}, fmt.Errorf("verifier answered for %s instead of %s", v.Digest, m.Digest)
	}
	return v, nil
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
	if mc := p.opts.manifests; mc != nil {
		if m, ok := mc.Get(digest.String()); ok && m.Digest == digest {
			return m, true, nil
		}
	}
	m, err = u.client.GetManifest(ctx, repo, digest.String(), nil)
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
// (served later under its verdict) and an image's blobs (blob gating).
func (p *Proxy) remember(mr manifestReq, digest v1.Hash, v verify.Verdict, pm *parsedManifest) {
	fp := p.verifier.Fingerprint()
	if pm.index {
		for _, c := range pm.children {
			p.coverage.add(verdictKey(fp, mr.u.name, mr.repo, c), coverEntry{parent: digest.String(), verdict: v})
		}
		return
	}
	p.blobs.add(blobKey(mr.u.name, mr.repo, pm.config), struct{}{})
	for _, l := range pm.layers {
		p.blobs.add(blobKey(mr.u.name, mr.repo, l), struct{}{})
	}
}

// decide reports a decision: audit event, metrics, drift and the ring.
func (p *Proxy) decide(mr manifestReq, digest v1.Hash, v verify.Verdict, cached bool, coveredBy string) {
	decision := "deny"
	switch {
	case v.Allowed:
		decision = "allow"
	case v.Served():
		decision = "warn"
	}
	dk := strings.Join([]string{mr.u.name, mr.repo, digest.String()}, "\x00")
	prev, seen := p.lastAllowed.Get(dk)
	drift := seen && prev && !v.Allowed
	p.lastAllowed.Add(dk, v.Allowed)
	if drift {
		p.metrics.drift.WithLabelValues(v.Boundary).Inc()
	}
	mode := v.Mode
	if mode == "" {
		mode = verify.ModeEnforce
	}
	p.metrics.decisions.WithLabelValues(v.Boundary, decision, string(mode), strconv.FormatBool(cached)).Inc()
	d := Decision{
		Time:       time.Now().UTC(),
		Client:     mr.client,
		Upstream:   mr.u.name,
		Repository: mr.repo,
		Reference:  mr.ref,
		Digest:     digest.String(),
		Boundary:   v.Boundary,
		Decision:   decision,
		Mode:       mode,
		Signers:    v.Signers,
		Reasons:    v.Reasons,
		Cached:     cached,
		CoveredBy:  coveredBy,
		Drift:      drift,
	}
	p.record(d)
}

func (p *Proxy) record(d Decision) {
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
		zap.String("client", d.Client),
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
		Upstream:   mr.u.name,
		Repository: mr.repo,
		Reference:  mr.ref,
		Digest:     digest.String(),
		Decision:   "deny",
		Mode:       verify.ModeEnforce,
		Reasons:    []string{reason},
	})
	p.metrics.decisions.WithLabelValues("", "deny", string(verify.ModeEnforce), "false").Inc()
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
	h := sha256.New()
	for _, s := range []string{fingerprint, upstreamName, repo, d.String()} {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func blobKey(upstreamName, repo string, d v1.Hash) string {
	return upstreamName + "\x00" + repo + "\x00" + d.String()
}

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
