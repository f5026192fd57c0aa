package proxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/verify"
)

// DefaultEvidenceTypes are the media types (path.Match patterns) of
// supply-chain evidence: signatures, attestations, SBOMs and VEX documents
// of the formats verifiers read. A manifest whose declared type and every
// layer match one of them, and that is about a digest allowed in its own
// repository, is served as evidence of that digest (see evidenceOf).
var DefaultEvidenceTypes = []string{
	"application/vnd.dev.sigstore.bundle*",             // sigstore bundle (cosign v3, model signing)
	"application/vnd.dev.cosign.simplesigning.v1+json", // cosign legacy .sig
	"application/vnd.dev.cosign.artifact.*",            // cosign attach signature/sbom
	"application/vnd.dsse.envelope.v1+json",            // cosign legacy .att
	"application/vnd.in-toto*",                         // in-toto statements
	"application/spdx*", "text/spdx*", "application/vnd.spdx*",
	"application/vnd.cyclonedx*",
	"application/vnd.syft+json",
	"application/vnd.openvex*", "application/openvex*",
	"application/vnd.cncf.notary.signature",     // Notary Project signature manifest
	"application/jose+json", "application/cose", // Notary Project signature envelopes
}

// genericTypes are config media types that say nothing about what a
// manifest is: the layers decide.
var genericTypes = map[string]bool{
	"application/vnd.oci.empty.v1+json":                    true,
	"application/vnd.oci.image.config.v1+json":             true,
	"application/vnd.docker.container.image.v1+json":       true,
	"application/vnd.unknown.config.v1+json":               true,
	"application/vnd.oci.image.manifest.v1+json":           true,
	"application/vnd.docker.distribution.manifest.v2+json": true,
}

const (
	// evidenceMemorySize bounds the digests remembered as evidence.
	evidenceMemorySize = 100_000
	evidenceMemoryTTL  = 10 * time.Minute
	// evidenceShapeTTL is how long the outcome of checking a manifest's
	// evidence bytes is kept: it is the bytes', which never change.
	evidenceShapeTTL = time.Hour

	// DefaultServedEvidenceBytes is the default of WithServedEvidenceBytes:
	// cosign's own default bound on an attachment it reads
	// (COSIGN_MAX_ATTACHMENT_SIZE, 128 MiB), so that no evidence cosign
	// would read is refused; far below a model's weights.
	DefaultServedEvidenceBytes = 128 << 20
)

// WithServedEvidenceBytes bounds what a manifest served as evidence may
// declare in its config and layers together. Evidence is served unsigned,
// so a manifest shaped as evidence, fetched by digest, would otherwise
// serve whatever bytes its layers hold: above n it is decided on its own
// instead (a denial unless it is signed). Default:
// DefaultServedEvidenceBytes.
func WithServedEvidenceBytes(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("served evidence bytes must be positive, not %d", n)
		}
		o.servedEvidenceBytes = n
		return nil
	}
}

// declaredBytes is what pm's config and layers declare together, capped
// at math.MaxInt64: the sizes come from the upstream, and a sum that
// wrapped around would pass any bound. parse refuses negative sizes; one
// here counts as too large.
func declaredBytes(pm *parsedManifest) int64 {
	total := pm.config.size
	if total < 0 {
		return math.MaxInt64
	}
	for _, l := range pm.layers {
		if l.size < 0 || total > math.MaxInt64-l.size {
			return math.MaxInt64
		}
		total += l.size
	}
	return total
}

// tooLargeEvidence refuses d as evidence of subject for what it declares
// (n bytes): logged and counted once, here, where the bytes were read, and
// remembered, so that d's denial, now and on a later fetch without the
// bytes, says why (decideManifest).
func (p *Proxy) tooLargeEvidence(d *manifestDecision, subject v1.Hash, n int64) {
	limit := p.opts.servedEvidenceBytes
	reason := fmt.Sprintf("evidence of %s is served only up to %d bytes (limits.served_evidence_bytes), and this manifest's config and layers declare %d", subject, limit, n)
	p.evidenceRefused.add(evidenceKey(d), reason)
	p.metrics.limitExceeded.WithLabelValues(limitServedEvidence).Inc()
	p.log.Warn("manifest shaped as evidence declares more bytes than evidence is served with",
		zap.String("upstream", d.mr.u.name), zap.String("repository", d.mr.repo), zap.String("digest", d.digest),
		zap.String("subject", subject.String()), zap.Int64("declared_bytes", n), zap.Int64("limit", limit))
}

// limitServedEvidence labels portcullis_limit_exceeded_total for
// WithServedEvidenceBytes.
const limitServedEvidence = "served_evidence_bytes"

// cosignTagRE is cosign's tag schema: the fallback index of the OCI
// referrers tag schema (sha256-<hex>) and the legacy .sig, .att and .sbom
// tags.
var cosignTagRE = regexp.MustCompile(`^sha256-([0-9a-f]{64})(\.(sig|att|sbom))?$`)

// evidenceTypes matches media types against the configured patterns.
type evidenceTypes []string

func (e evidenceTypes) match(mt string) bool {
	mt = strings.TrimSpace(strings.Split(mt, ";")[0])
	if mt == "" {
		return false
	}
	for _, p := range e {
		if ok, _ := path.Match(p, mt); ok {
			return true
		}
	}
	return false
}

// isEvidence says whether a parsed manifest is made of evidence only: its
// declared type (artifactType, else a config media type that is not a
// generic one) and every one of its layers, at least one, are evidence
// types. A model or an image attached as a "referrer" is not evidence,
// whatever it points at, and is decided like any manifest.
func (e evidenceTypes) isEvidence(pm *parsedManifest) bool {
	if pm.index || len(pm.layerTypes) == 0 {
		return false
	}
	if pm.artifactType != "" && !genericTypes[pm.artifactType] && !e.match(pm.artifactType) {
		return false
	}
	for _, lt := range pm.layerTypes {
		if !e.match(lt) {
			return false
		}
	}
	return true
}

// WithEvidenceTypes sets the media type patterns (path.Match syntax) that
// make a manifest evidence. Default: DefaultEvidenceTypes. An empty list
// turns evidence serving off: evidence is then verified like any manifest.
func WithEvidenceTypes(patterns []string) Option {
	return func(o *options) error {
		for _, p := range patterns {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return fmt.Errorf("invalid evidence type pattern %q", p)
			}
		}
		o.evidenceTypes = append(evidenceTypes{}, patterns...)
		o.evidenceTypesSet = true
		return nil
	}
}

// evidenceCandidate says, before anything is fetched, whether a manifest
// request may be for evidence: a tag of cosign's schema, or a digest
// already served as evidence. Other manifests are only checked for being
// evidence once their own verdict is not an allow.
func (p *Proxy) evidenceCandidate(d *manifestDecision, req apiRequest) bool {
	if len(p.opts.evidenceTypes) == 0 {
		return false
	}
	if req.isTag {
		return cosignTagRE.MatchString(req.ref)
	}
	// The warm path of a pull by digest: nothing is built for the lookup
	// until some evidence was served.
	if p.evidence.c.Len() == 0 {
		return false
	}
	_, ok := p.evidence.get(evidenceKey(d))
	return ok
}

// evidenceKey scopes what a digest is evidence of to its upstream and
// repository.
func evidenceKey(d *manifestDecision) string {
	return d.mr.u.name + "\x00" + d.mr.repo + "\x00" + d.digest
}

// evidenceOf decides d as evidence when it is evidence of a digest served in
// the same upstream and repository. It reports whether it did; when it did
// not, d is left as it was, to be decided (or kept decided) on its own.
//
// What must not pass, and why it does not:
//   - content dressed as evidence: every layer and the declared type must be
//     evidence types, checked on the bytes, whatever the tag says;
//   - evidence of a digest allowed only in a neighbouring repository or
//     upstream: the subject's verdict is looked up under d's own upstream
//     and repository;
//   - a tag that names one subject and a manifest that names another: both
//     must agree;
//   - evidence of a denied subject: denied, naming the subject;
//   - evidence under a tag a loader pulls (neither a digest nor one of
//     cosign's tags): decideManifest keeps the manifest's own verdict;
//   - a model's weights dressed as evidence and fetched by digest: above
//     WithServedEvidenceBytes the manifest keeps its own verdict.
//
// An index is evidence only as cosign's fallback index (tag sha256-<hex>);
// it is served as a listing and covers none of its children, each of which
// is decided when fetched.
func (p *Proxy) evidenceOf(ctx context.Context, d *manifestDecision, req apiRequest) (bool, error) {
	if len(p.opts.evidenceTypes) == 0 {
		return false, nil
	}
	if err := p.fetchBytes(ctx, d); err != nil {
		return false, err
	}
	if err := p.checkDigest(d); err != nil {
		return false, err
	}
	pm, err := p.parse(d.manifest)
	if err != nil {
		return false, nil
	}
	subject, ok := p.evidenceSubject(d, req, pm)
	if !ok {
		return false, nil
	}
	// Before the subject is decided: the size alone refuses it, then
	// the bytes.
	if n := declaredBytes(pm); !pm.index && n > p.opts.servedEvidenceBytes {
		p.tooLargeEvidence(d, subject, n)
		return false, nil
	}
	if !pm.index {
		why, err := p.evidenceShape(ctx, d, pm)
		if err != nil {
			// Undecided: remembered, so that the next pull by digest
			// checks it again rather than keep a denial of it as content.
			p.evidence.add(evidenceKey(d), subject)
			return false, err
		}
		if why != "" {
			p.evidenceRefused.add(evidenceKey(d), fmt.Sprintf("evidence of %s is served only when its blobs are documents of the formats their media types name, and %s", subject, why))
			return false, nil
		}
	}
	sv, err := p.subjectVerdict(ctx, d.mr, subject)
	if err != nil {
		if ctx.Err() != nil {
			return false, clientGone(ctx)
		}
		// The subject could not be decided: d is decided on its own,
		// which fails closed as well.
		return false, nil
	}
	// Remembered whatever the subject's verdict: a later fetch by digest
	// is then told that it is evidence, and of what, before anything else.
	p.evidence.add(evidenceKey(d), subject)
	d.parsed = pm
	d.evidenceOf = subject.String()
	d.source = sourceEvidence
	d.verdict = verify.Verdict{
		Allowed:   sv.Allowed,
		Mode:      sv.Mode,
		Boundary:  sv.Boundary,
		Digest:    d.digest,
		Reasons:   []string{"evidence-of " + subject.String()},
		CheckedAt: time.Now(),
	}
	if !sv.Served() {
		reasons := sv.Reasons
		if len(reasons) == 0 {
			reasons = []string{"denied by policy"}
		}
		d.verdict.Mode = verify.ModeEnforce
		d.verdict.Reasons = []string{fmt.Sprintf("evidence of %s, which is denied: %s", subject, strings.Join(reasons, "; "))}
		return true, nil
	}
	if !sv.Allowed {
		d.verdict.Reasons = append(d.verdict.Reasons, sv.Reasons...)
	}
	return true, nil
}

// evidenceSubject is the digest d is evidence of, if d is evidence at all.
func (p *Proxy) evidenceSubject(d *manifestDecision, req apiRequest, pm *parsedManifest) (v1.Hash, bool) {
	var fromTag *v1.Hash
	if req.isTag {
		if m := cosignTagRE.FindStringSubmatch(req.ref); m != nil {
			fromTag = &v1.Hash{Algorithm: "sha256", Hex: m[1]}
			if m[2] == "" {
				// The fallback index: a listing of referrers.
				if !pm.index || pm.subject != nil {
					return v1.Hash{}, false
				}
				return *fromTag, true
			}
		}
	}
	if !p.opts.evidenceTypes.isEvidence(pm) {
		return v1.Hash{}, false
	}
	var subject v1.Hash
	switch {
	case pm.subject != nil && fromTag != nil && *pm.subject != *fromTag:
		return v1.Hash{}, false
	case pm.subject != nil:
		subject = *pm.subject
	case fromTag != nil:
		subject = *fromTag
	default:
		s, ok := p.evidence.get(evidenceKey(d))
		if !ok {
			return v1.Hash{}, false
		}
		subject = s
	}
	if subject == d.desc.Digest {
		return v1.Hash{}, false
	}
	return subject, true
}

// subjectVerdict is the verdict of subject in mr's upstream and repository,
// found the way a pull of it finds one: coverage, cache, else verified.
// The subject is decided on its own policy, never as evidence itself, so
// evidence never vouches for evidence.
func (p *Proxy) subjectVerdict(ctx context.Context, mr manifestReq, subject v1.Hash) (verify.Verdict, error) {
	mr.ref = subject.String()
	mr.lineage = verify.LineageContext{}
	sd := &manifestDecision{mr: mr, desc: v1.Descriptor{Digest: subject}}
	sd.digest = subject.String()
	sd.fingerprint = mr.v.FingerprintFor(mr.u.name, mr.repo)
	sd.key = verdictKey(sd.fingerprint, mr.u.name, mr.repo, subject)
	if err := p.findVerdict(ctx, sd); err != nil {
		return verify.Verdict{}, err
	}
	if sd.source == sourceNone {
		return verify.Verdict{}, errors.New("no verdict")
	}
	return sd.verdict, nil
}

// Bounds of what a shape refusal quotes.
const (
	maxReasonMediaType = 128
	maxShapeReason     = 512
)

// emptyJSONDigest is the digest of {}, the OCI empty descriptor's content
// and nearly every artifact's config: known without a fetch.
var emptyJSONDigest = v1.Hash{Algorithm: "sha256", Hex: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}

// evidenceShape checks that the config and layers of pm, a manifest about
// to be served as evidence, are documents of the formats their media types
// name (checkEvidenceShape): it returns why not, or "" when they are.
// The blobs are fetched from d's upstream, checked against their digests
// and bounded by their declared sizes (WithServedEvidenceBytes bounds
// their sum, and the bytes held at once by every check together); the
// outcome is kept per manifest digest. A blob that cannot be fetched is an
// error: nothing is served as evidence unchecked.
func (p *Proxy) evidenceShape(ctx context.Context, d *manifestDecision, pm *parsedManifest) (string, error) {
	if why, ok := p.evidenceShapes.get(d.digest); ok {
		return why, nil
	}
	type blob struct {
		ref    blobRef
		mt     string
		config bool
	}
	blobs := []blob{{pm.config, pm.configType, true}}
	for i, l := range pm.layers {
		blobs = append(blobs, blob{l, pm.layerTypes[i], false})
	}
	n := min(declaredBytes(pm), p.opts.servedEvidenceBytes)
	if err := p.shapeBytes.Acquire(ctx, n); err != nil {
		return "", clientGone(ctx)
	}
	defer p.shapeBytes.Release(n)
	why := ""
	for _, b := range blobs {
		var raw []byte
		if b.ref.digest == emptyJSONDigest && b.ref.size == 2 {
			raw = []byte("{}")
		} else {
			var err error
			if raw, err = d.mr.u.client.Blob(ctx, d.mr.repo, b.ref.digest, b.ref.size); err != nil {
				return "", p.upstreamFailure(ctx, d.mr.u, err, CodeBlobUnknown, "evidence blob")
			}
		}
		if err := checkEvidenceShape(b.mt, b.config, raw); err != nil {
			what := "layer"
			if b.config {
				what = "config"
			}
			// Bounded: the media type and what the error quotes come from
			// the upstream, and the reason is kept and sent to clients.
			why = truncate(fmt.Sprintf("its %s %s is not a document of %s: %v", what, b.ref.digest, truncate(b.mt, maxReasonMediaType), err), maxShapeReason)
			break
		}
	}
	if why != "" {
		p.metrics.evidenceMisshapen.Inc()
		p.log.Warn("manifest shaped as evidence holds a blob that is not evidence of its media type",
			zap.String("upstream", d.mr.u.name), zap.String("repository", d.mr.repo), zap.String("digest", d.digest),
			zap.String("reason", why))
	}
	p.evidenceShapes.add(d.digest, why)
	return why, nil
}
