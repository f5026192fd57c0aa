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
)

// Size limits for evidence blobs. A simplesigning payload is a few hundred
// bytes; bundles can carry large attestation statements.
const (
	maxPayloadBytes = 1 << 20
	maxBundleBytes  = 8 << 20
)

// evidence is one piece of signature or attestation material found for a
// subject. Discovery never judges trust; it only parses. Malformed material
// becomes evidence with err set, so it is reported rather than dropped.
type evidence struct {
	format string
	source string
	bundle *bundle.Bundle
	legacy *legacySignature
	// statement is the in-toto statement of a DSSE envelope (a bundle's or
	// a legacy attestation's), parsed once, strictly, from exactly the
	// payload bytes the envelope signature covers; nil for message
	// signatures and simplesigning payloads. A DSSE envelope whose
	// statement does not parse is rejected evidence (err set): a
	// statement that cannot be read cannot name the subject.
	statement *statement
	// predicateType is the statement's predicate type. For evidence whose
	// blob was read but rejected while parsing it is the unsigned
	// annotation instead, only so a rule's reasons can say why the
	// attestation it asked for was rejected; such evidence never verifies.
	predicateType string
	err           error
}

func (ev *evidence) label() string { return ev.format + " " + ev.source }

type discovery struct {
	evidence []*evidence
	// attestations are legacy .att envelopes, read only when the boundary
	// has attestation or lineage rules and never counted as signatures.
	attestations []*evidence
	checked      []string
	notes        []string
}

// discover collects the signature evidence of s. Only Fetcher failures
// other than ErrNotFound / ErrNoReferrersAPI and context errors are
// returned as errors: they mean the evidence could not be read at all.
func (e *Engine) discover(ctx context.Context, s Subject, f Fetcher, attestations bool) (*discovery, error) {
	d := &discovery{}
	fallbackTag := "sha256-" + s.Digest.Hex

	var descs []v1.Descriptor
	idx, err := f.Referrers(ctx, s.Repository, s.Digest)
	switch {
	case err == nil:
		d.checked = append(d.checked, "referrers")
		if idx != nil {
			descs = append(descs, idx.Manifests...)
		}
	case errors.Is(err, ErrNoReferrersAPI), errors.Is(err, ErrNotFound):
	default:
		return nil, fmt.Errorf("listing referrers of %s: %w", s.Digest, err)
	}

	// The fallback tag is read even when the referrers API answered:
	// evidence pushed while the registry lacked the API stays there.
	d.checked = append(d.checked, fallbackTag)
	m, err := f.Manifest(ctx, s.Repository, fallbackTag)
	switch {
	case err == nil:
		fi, perr := parseIndex(m.Bytes)
		if perr != nil {
			d.evidence = append(d.evidence, &evidence{format: FormatSigstoreBundle, source: fallbackTag,
				err: fmt.Errorf("malformed fallback index: %w", perr)})
		} else {
			descs = append(descs, fi.Manifests...)
		}
	case errors.Is(err, ErrNotFound):
	default:
		return nil, fmt.Errorf("reading %s: %w", fallbackTag, err)
	}

	descs = dedupe(descs)
	// Descriptors labelled as bundles are opened first. The label is never
	// trusted to select evidence, only to spend the budget well.
	sort.SliceStable(descs, func(i, j int) bool { return bundleHint(descs[i]) && !bundleHint(descs[j]) })
	if len(descs) > e.maxEvidence {
		d.notes = append(d.notes, fmt.Sprintf("evidence limit reached: examined %d of %d referrers", e.maxEvidence, len(descs)))
		descs = descs[:e.maxEvidence]
	}
	for _, desc := range descs {
		ev, err := e.openReferrer(ctx, s, f, desc)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			d.evidence = append(d.evidence, ev)
		}
	}

	sigTag := fallbackTag + ".sig"
	d.checked = append(d.checked, sigTag)
	m, err = f.Manifest(ctx, s.Repository, sigTag)
	switch {
	case err == nil:
		evs, err := e.openLegacy(ctx, s, f, m, d)
		if err != nil {
			return nil, err
		}
		d.evidence = append(d.evidence, evs...)
	case errors.Is(err, ErrNotFound):
	default:
		return nil, fmt.Errorf("reading %s: %w", sigTag, err)
	}

	if !attestations {
		return d, nil
	}
	attTag := fallbackTag + ".att"
	m, err = f.Manifest(ctx, s.Repository, attTag)
	switch {
	case err == nil:
		evs, err := e.openAttestations(ctx, s, f, m, d)
		if err != nil {
			return nil, err
		}
		d.attestations = append(d.attestations, evs...)
	case errors.Is(err, ErrNotFound):
	default:
		return nil, fmt.Errorf("reading %s: %w", attTag, err)
	}
	return d, nil
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
func (e *Engine) openReferrer(ctx context.Context, s Subject, f Fetcher, desc v1.Descriptor) (*evidence, error) {
	ev := &evidence{format: FormatSigstoreBundle, source: desc.Digest.String()}
	if desc.Digest.Algorithm != "sha256" || len(desc.Digest.Hex) != 64 {
		ev.err = fmt.Errorf("unsupported descriptor digest %q", desc.Digest)
		return ev, nil
	}
	m, err := f.Manifest(ctx, s.Repository, desc.Digest.String())
	if errors.Is(err, ErrNotFound) {
		ev.err = errors.New("listed manifest not found")
		return ev, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading referrer %s: %w", desc.Digest, err)
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
	var layer *v1.Descriptor
	for i := range man.Layers {
		if strings.HasPrefix(string(man.Layers[i].MediaType), mediaTypeBundlePrefix) {
			layer = &man.Layers[i]
			break
		}
	}
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
	raw, err := readBlob(ctx, f, s.Repository, layer.Digest, maxBundleBytes)
	if err != nil {
		if errors.Is(err, errEvidence) {
			ev.err = err
			return ev, nil
		}
		return nil, err
	}
	ev.bundle, ev.statement, ev.err = parseBundle(raw)
	if ev.statement != nil {
		ev.predicateType = ev.statement.PredicateType
	} else if ev.err != nil {
		ev.predicateType = man.Annotations[annotationBundlePredicate]
	}
	return ev, nil
}

// errEvidence marks blob problems that reject one piece of evidence rather
// than the whole evaluation.
var errEvidence = errors.New("evidence unavailable")

func readBlob(ctx context.Context, f Fetcher, repo string, h v1.Hash, limit int64) ([]byte, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return nil, fmt.Errorf("%w: unsupported blob digest %q", errEvidence, h)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	raw, err := f.Blob(ctx, repo, h, limit)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: blob %s not found", errEvidence, h)
	}
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", h, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%w: blob %s exceeds %d bytes", errEvidence, h, limit)
	}
	if err := checkDigest(raw, h); err != nil {
		return nil, fmt.Errorf("%w: %v", errEvidence, err)
	}
	return raw, nil
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

// parseBundle parses a sigstore bundle (v0.1–v0.3) and, when it carries
// a DSSE envelope, its in-toto statement. The statement is read from the
// envelope's payload bytes as the bundle holds them, which are the bytes
// its signature covers. A bundle whose statement does not parse is
// refused as a whole: cosign counts a DSSE bundle as a signature because
// its statement names the digest, and an unreadable statement names
// nothing.
func parseBundle(raw []byte) (*bundle.Bundle, *statement, error) {
	var b bundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, nil, fmt.Errorf("malformed bundle: %w", err)
	}
	env := b.GetDsseEnvelope()
	if env == nil {
		return &b, nil, nil
	}
	st, err := dsseStatement(env.GetPayloadType(), env.GetPayload())
	if err != nil {
		return nil, nil, fmt.Errorf("bundle statement cannot name the subject: %w", err)
	}
	return &b, st, nil
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
