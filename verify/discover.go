package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Evidence formats, as named in verdicts.
const (
	FormatCosignLegacy   = "cosign-legacy"
	FormatSigstoreBundle = "sigstore-bundle"
)

// Media types and annotations cosign writes (DESIGN.md §4).
const (
	mediaTypeSimpleSigning = "application/vnd.dev.cosign.simplesigning.v1+json"
	mediaTypeBundlePrefix  = "application/vnd.dev.sigstore.bundle"
	annotationSignature    = "dev.cosignproject.cosign/signature"
	annotationCertificate  = "dev.sigstore.cosign/certificate"
	annotationChain        = "dev.sigstore.cosign/chain"
	annotationRekorBundle  = "dev.sigstore.cosign/bundle"
	annotationRFC3161      = "dev.sigstore.cosign/rfc3161timestamp"
	annotationBundleType   = "dev.sigstore.bundle.content"
	// annotationBundlePredicate is unsigned: it only labels a rejected
	// bundle in reasons.
	annotationBundlePredicate = "dev.sigstore.bundle.predicateType"
	// bundleTypeMessage is the dev.sigstore.bundle.content value of a
	// message-signature bundle.
	bundleTypeMessage = "message-signature"
)

// evidence is one piece of signature or attestation material found for a
// subject. Reading it never judges trust; it only parses what can be
// parsed without trusting it. Malformed material becomes evidence with err
// set, so it is reported rather than dropped.
type evidence struct {
	format string
	source string
	// where names the place it was read from when that is not the
	// subject's own repository.
	where    string
	bundle   *bundle.Bundle
	legacy   *legacySignature
	notation *notationSignature
	// statement is the in-toto statement of a DSSE envelope (a bundle's or
	// a legacy attestation's), parsed once, strictly, from exactly the
	// payload bytes the envelope signature covers, and only after that
	// signature verified under one of the boundary's authorities (open):
	// what no authority signed is never parsed. It is nil for message
	// signatures and simplesigning payloads. A DSSE envelope whose
	// statement does not parse is rejected evidence (err set): a
	// statement that cannot be read cannot name the subject.
	statement *statement
	// predicateType is the statement's predicate type. Until the statement
	// is read, and for evidence rejected before it was, it is the unsigned
	// annotation instead, only so a rule's reasons can say why the
	// attestation it asked for was rejected; such evidence never verifies.
	predicateType string
	err           error
	// results holds each authority's check of a DSSE envelope's
	// signature, so opening it, counting it and judging it for rules
	// verify it once per authority.
	results map[*compiledAuthority]*envelopeResult
}

func (ev *evidence) label() string {
	if ev.where != "" {
		return ev.format + " " + ev.source + " in " + ev.where
	}
	return ev.format + " " + ev.source
}

// envelope returns the payload type and payload of a DSSE envelope, and
// false for other evidence.
func (ev *evidence) envelope() (string, []byte, bool) {
	switch {
	case ev.legacy != nil && ev.legacy.env != nil:
		return ev.legacy.env.PayloadType, ev.legacy.payload, true
	case ev.bundle != nil:
		if env := ev.bundle.GetDsseEnvelope(); env != nil {
			return env.GetPayloadType(), env.GetPayload(), true
		}
	}
	return "", nil, false
}

// collect reads the evidence of the subject, verifying each piece as it
// is read, until every decision is made or a limit stops it. Only Fetcher
// failures other than ErrNotFound / ErrNoReferrersAPI and context errors
// are returned: they mean the evidence could not be read at all.
func (r *run) collect(ctx context.Context) error {
	ctx, span := startSpan(ctx, spanDiscover)
	defer r.endDiscover(span)
	stop := func() {}
	if !r.e.inOrder {
		stop = r.startReadAhead(ctx)
	}
	err := r.read(ctx)
	stop()
	if errors.Is(err, errBudget) {
		r.leftUnread(LimitEvidenceBytes, r.budget.reason())
		return nil
	}
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, "evidence not read")
	}
	return err
}

// endDiscover records what discovery found: the signatures read, and the
// limit that stopped it, if one did.
func (r *run) endDiscover(span trace.Span) {
	if span.IsRecording() {
		span.SetAttributes(
			attribute.Int("portcullis.signatures_found", r.found),
			attribute.Int("portcullis.signers", len(r.tally.signers)),
			attribute.String("portcullis.limit", r.limit),
		)
	}
	span.End()
}

// read reads each of the boundary's evidence places in turn, as long as
// a decision is still open.
func (r *run) read(ctx context.Context) error {
	for _, l := range r.locs {
		if r.done() {
			return nil
		}
		r.at = l
		if err := r.readAt(ctx); err != nil {
			return err
		}
	}
	return nil
}

// readAt reads the evidence about the subject's digest kept in r.at:
// referrers, the fallback tag index and the cosign tags, all in that one
// repository, in that order unless the .sig tag is read first
// (run.sigFirst).
func (r *run) readAt(ctx context.Context) (err error) {
	s, at := r.s, r.at
	fallbackTag := "sha256-" + s.Digest.Hex
	// needed collects what this run needs here, remembered once the
	// place is read through (tagMemory).
	var needed tagNeed
	if r.ahead != nil {
		r.ahead.place(at)
		defer func() {
			if err == nil {
				r.tagsRead(at, needed)
			}
		}()
	}

	// A place whose .sig tag alone decided its last run has it read
	// first: when it decides again, the referrers and the fallback tag
	// are never asked for (tagMemory).
	sigTag := fallbackTag + ".sig"
	sigFirst := r.sigFirst(at)
	if sigFirst {
		needed |= needSig
		if err := r.readSig(ctx, sigTag); err != nil {
			return err
		}
		if r.done() {
			at.checked = append(at.checked, sigTag)
			return nil
		}
	}
	needed |= needIndex
	counted := len(r.tally.signers)

	var descs []v1.Descriptor
	idx, err := at.f.Referrers(ctx, at.repo, s.Digest)
	switch {
	case err == nil:
		at.checked = append(at.checked, "referrers")
		if idx != nil {
			descs = append(descs, idx.Manifests...)
		}
	case errors.Is(err, ErrNoReferrersAPI), errors.Is(err, ErrNotFound):
	default:
		return fmt.Errorf("listing referrers of %s in %s: %w", s.Digest, at, err)
	}

	// The fallback tag is read even when the referrers API answered:
	// evidence pushed while the registry lacked the API stays there.
	at.checked = append(at.checked, fallbackTag)
	m, ok, err := r.readTag(ctx, fallbackTag)
	if err != nil {
		return err
	}
	if ok {
		fi, perr := parseIndex(m.Bytes)
		if perr == nil && int64(len(m.Bytes)) > r.manifestLimit() {
			perr = fmt.Errorf("%d bytes exceed the limit of %d bytes", len(m.Bytes), r.manifestLimit())
		}
		if perr != nil {
			ev := &evidence{format: FormatSigstoreBundle, source: fallbackTag, err: fmt.Errorf("malformed fallback index: %w", perr)}
			if err := r.add(ctx, ev, true); err != nil {
				return err
			}
		} else {
			descs = append(descs, fi.Manifests...)
		}
	}

	descs = dedupe(descs)
	// Descriptors labelled as bundles are opened first. The label is never
	// trusted to select evidence, only to spend the budget well.
	sort.SliceStable(descs, func(i, j int) bool { return bundleHint(descs[i]) && !bundleHint(descs[j]) })
	listed := len(descs)
	if listed > r.e.maxEvidence {
		descs = descs[:r.e.maxEvidence]
	}
	for _, desc := range descs {
		if r.done() {
			return nil
		}
		ev, err := r.openReferrer(ctx, desc)
		if err != nil {
			return err
		}
		if ev != nil {
			if err := r.add(ctx, ev, true); err != nil {
				return err
			}
		}
	}
	if listed > len(descs) && !r.done() {
		r.leftUnread(LimitEvidenceItems, fmt.Sprintf("evidence limit reached: examined %d of %d referrers", len(descs), listed))
	}

	switch {
	case sigFirst:
		// Named where reading in order would have: a denial's reasons
		// do not depend on the order.
		at.checked = append(at.checked, sigTag)
	case r.needSignatures():
		needed |= needSig
		at.checked = append(at.checked, sigTag)
		fromIndex := len(r.tally.signers) - counted
		if err := r.readSig(ctx, sigTag); err != nil {
			return err
		}
		if r.done() && fromIndex == 0 {
			// Decided by the .sig tag alone: the index was read for
			// nothing, and next time the tag is read first.
			needed &^= needIndex
		}
	}

	if !r.needAttestations() {
		return nil
	}
	needed |= needAtt
	attTag := fallbackTag + ".att"
	m, ok, err = r.readTag(ctx, attTag)
	if err != nil || !ok {
		return err
	}
	return r.openAttestations(ctx, m)
}

// tagsRead remembers which cosign tags the run needed at l, and counts
// what the tags that place left out for l saved or cost.
func (r *run) tagsRead(l *location, needed tagNeed) {
	r.e.tags.record(l.upstream, l.repo, needed)
	skipped := r.ahead.skipped[l]
	for _, t := range []tagNeed{needSig, needAtt, needIndex} {
		switch {
		case skipped&t == 0:
		case needed&t != 0:
			r.reads.MissedTags++
		default:
			r.reads.SavedTags++
		}
	}
}

// readSig reads the place's .sig tag and opens its signatures.
func (r *run) readSig(ctx context.Context, sigTag string) error {
	m, ok, err := r.readTag(ctx, sigTag)
	if err != nil || !ok {
		return err
	}
	return r.openLegacy(ctx, m)
}

// sigFirst says the run reads the .sig tag at l before its referrers and
// fallback index: it needs signatures alone, and the last run at l was
// decided by that tag alone. Reading stops once a decision is made, and
// what counts (distinct authorities meeting the threshold) only grows
// with what is read, so a .sig tag that decides in this order would have
// decided in the other too, reached after the index; what differs is
// which of several valid signers are named, and that evidence listed in
// the index is not read at all, so neither can it spend the budget.
func (r *run) sigFirst(l *location) bool {
	return r.needSignatures() && !r.needAttestations() && r.e.tags.sigFirst(l.upstream, l.repo)
}

// manifestLimit bounds one evidence manifest, which may hold either kind
// of evidence.
func (r *run) manifestLimit() int64 {
	return max(r.e.limits.SignatureBytes, r.e.limits.AttestationBytes)
}

// readTag reads a manifest by tag, charging it to the budget. It reports
// false when the tag does not exist.
func (r *run) readTag(ctx context.Context, tag string) (Manifest, bool, error) {
	if err := r.budget.admit(0); err != nil {
		return Manifest{}, false, err
	}
	m, err := r.at.f.Manifest(ctx, r.at.repo, tag)
	switch {
	case errors.Is(err, ErrNotFound):
		return Manifest{}, false, nil
	case err != nil:
		return Manifest{}, false, fmt.Errorf("reading %s: %w", tag, err)
	}
	if err := r.budget.charge(int64(len(m.Bytes))); err != nil {
		return Manifest{}, false, err
	}
	return m, true, nil
}

func bundleHint(d v1.Descriptor) bool {
	return strings.HasPrefix(d.ArtifactType, mediaTypeBundlePrefix) || d.Annotations[annotationBundleType] != ""
}

func dedupe(descs []v1.Descriptor) []v1.Descriptor {
	seen := make(map[v1.Hash]bool, len(descs))
	out := descs[:0:0]
	for _, d := range descs {
		if seen[d.Digest] {
			continue
		}
		seen[d.Digest] = true
		out = append(out, d)
	}
	return out
}

// openReferrer opens one listed manifest and returns its bundle evidence,
// or nil when it is some other kind of artifact (an SBOM, a model card).
// A manifest or bundle larger than its item limit is rejected evidence,
// read no further than the limit; errBudget means the budget cannot pay
// for it.
func (r *run) openReferrer(ctx context.Context, desc v1.Descriptor) (*evidence, error) {
	s := r.s
	ev := &evidence{format: FormatSigstoreBundle, source: desc.Digest.String()}
	if desc.Digest.Algorithm != "sha256" || len(desc.Digest.Hex) != 64 {
		ev.err = fmt.Errorf("unsupported descriptor digest %q", desc.Digest)
		return ev, nil
	}
	if limit := r.manifestLimit(); desc.Size > limit {
		ev.err = fmt.Errorf("referrer manifest of %d bytes exceeds the limit of %d bytes", desc.Size, limit)
		return ev, nil
	}
	if err := r.budget.admit(desc.Size); err != nil {
		return nil, err
	}
	m, err := r.at.f.Manifest(ctx, r.at.repo, desc.Digest.String())
	if errors.Is(err, ErrNotFound) {
		ev.err = errors.New("listed manifest not found")
		return ev, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading referrer %s: %w", desc.Digest, err)
	}
	if err := r.budget.charge(int64(len(m.Bytes))); err != nil {
		return nil, err
	}
	if limit := r.manifestLimit(); int64(len(m.Bytes)) > limit {
		ev.err = fmt.Errorf("referrer manifest of %d bytes exceeds the limit of %d bytes", len(m.Bytes), limit)
		return ev, nil
	}
	if err := checkDigest(m.Bytes, desc.Digest); err != nil {
		ev.err = err
		return ev, nil
	}
	man, err := parseManifest(m.Bytes)
	if err != nil {
		ev.err = fmt.Errorf("malformed referrer manifest: %w", err)
		return ev, nil
	}
	if nev, ok, err := r.openNotation(ctx, ev, man); ok {
		return nev, err
	}
	layer := bundleLayer(man)
	if layer == nil {
		if strings.HasPrefix(man.ArtifactType, mediaTypeBundlePrefix) {
			ev.err = errors.New("bundle artifact has no bundle layer")
			return ev, nil
		}
		return nil, nil
	}
	if man.Subject == nil {
		ev.err = errors.New("referrer has no subject")
		return ev, nil
	}
	if man.Subject.Digest != s.Digest {
		ev.err = fmt.Errorf("referrer subject %s is not the subject %s", man.Subject.Digest, s.Digest)
		return ev, nil
	}
	ev.predicateType = man.Annotations[annotationBundlePredicate]
	// The content annotation is unsigned, but it is written by whoever
	// wrote this referrer: believing "message-signature" can only hold
	// their own bundle to the smaller limit. Anything else may be DSSE.
	limit, what := r.e.limits.AttestationBytes, "bundle"
	if man.Annotations[annotationBundleType] == bundleTypeMessage {
		limit, what = r.e.limits.SignatureBytes, "message-signature bundle"
	}
	raw, err := r.readBlob(ctx, layer.Digest, layer.Size, limit, what)
	if err != nil {
		if errors.Is(err, errEvidence) {
			ev.err = err
			return ev, nil
		}
		return nil, err
	}
	ev.bundle, ev.err = parseBundle(raw)
	if ev.err == nil && ev.bundle.GetMessageSignature() != nil && int64(len(raw)) > r.e.limits.SignatureBytes {
		ev.bundle, ev.err = nil, fmt.Errorf("message-signature bundle of %d bytes exceeds the limit of %d bytes", len(raw), r.e.limits.SignatureBytes)
	}
	return ev, nil
}

// errEvidence marks blob problems that reject one piece of evidence rather
// than the whole evaluation.
var errEvidence = errors.New("evidence unavailable")

// readBlob reads one evidence blob of at most limit bytes through the
// budget. A blob declared or found larger than limit is rejected evidence
// (errEvidence); one that does not fit in what is left of the budget
// spends it (errBudget). Reading stops at the smaller of the two, so
// neither bound is passed whatever the descriptor claims.
func (r *run) readBlob(ctx context.Context, h v1.Hash, declared, limit int64, what string) ([]byte, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return nil, fmt.Errorf("%w: unsupported blob digest %q", errEvidence, h)
	}
	if declared > limit {
		return nil, fmt.Errorf("%w: %s of %d bytes exceeds the limit of %d bytes", errEvidence, what, declared, limit)
	}
	if err := r.budget.admit(max(declared, 0)); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	read := min(limit, r.budget.remaining())
	// The Fetcher may have read up to read bytes before refusing more.
	over := func() ([]byte, error) {
		_ = r.budget.charge(read)
		if read < limit {
			r.budget.spend()
			return nil, errBudget
		}
		return nil, fmt.Errorf("%w: %s %s exceeds the limit of %d bytes", errEvidence, what, h, limit)
	}
	raw, err := r.at.f.Blob(ctx, r.at.repo, h, read)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("%w: blob %s not found", errEvidence, h)
	case errors.Is(err, ErrTooLarge):
		return over()
	case err != nil:
		return nil, fmt.Errorf("reading blob %s: %w", h, err)
	case int64(len(raw)) > read:
		return over()
	}
	if err := r.budget.charge(int64(len(raw))); err != nil {
		return nil, err
	}
	if err := checkDigest(raw, h); err != nil {
		return nil, fmt.Errorf("%w: %v", errEvidence, err)
	}
	return raw, nil
}

// knownBlob charges bytes the run already has (a layer predicted and
// checked against its digest) like a read of them: the same limit and the
// same budget, so predicting a layer never lets a run see more than
// reading it would. It answers nil when b is nil or over a limit; the
// layer is then read, and refused, as always.
func (r *run) knownBlob(b []byte, limit int64) []byte {
	if b == nil || int64(len(b)) > limit || r.budget.admit(int64(len(b))) != nil {
		return nil
	}
	if r.budget.charge(int64(len(b))) != nil {
		return nil
	}
	return b
}

// checkDigest re-checks content against its digest even though the Fetcher
// promises to: the evidence's meaning depends on it.
func checkDigest(b []byte, h v1.Hash) error {
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != h.Hex {
		return fmt.Errorf("content does not match digest %s", h)
	}
	return nil
}

// parseBundle parses a sigstore bundle (v0.1–v0.3). A DSSE envelope's
// payload stays bytes: its statement is read only once an authority has
// verified the envelope signature (run.open).
func parseBundle(raw []byte) (*bundle.Bundle, error) {
	var b bundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("malformed bundle: %w", err)
	}
	return &b, nil
}

func parseManifest(b []byte) (*v1.Manifest, error) {
	var m v1.Manifest
	if err := strictUnmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d", m.SchemaVersion)
	}
	return &m, nil
}

func parseIndex(b []byte) (*v1.IndexManifest, error) {
	var m v1.IndexManifest
	if err := strictUnmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d", m.SchemaVersion)
	}
	return &m, nil
}

// strictUnmarshal decodes exactly one JSON value; trailing data is an
// error rather than ignored.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
