package verify

import (
	"context"
	"errors"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore-go/pkg/root"
)

// Subject is the manifest a decision is about. Its bytes have already been
// checked against Digest by the caller.
type Subject struct {
	Upstream   string // configured upstream name
	Repository string // repository path at that upstream, e.g. "library/alpine"
	Reference  string // what the client asked for (tag or digest), for messages only
	Digest     v1.Hash
	MediaType  types.MediaType
	// ArtifactType is the manifest's artifactType, else its config media
	// type; empty for an index without artifactType.
	ArtifactType string
	Manifest     []byte

	// Lineage carries what the engine needs to follow provenance
	// dependencies of this subject. The zero value means "a root subject
	// with no dependency verifier": a boundary that requires lineage then
	// denies, it never skips the check.
	Lineage LineageContext

	// Fetchers reads other configured upstreams, for a boundary that
	// keeps evidence on another upstream than the subject's. nil means
	// only the subject's upstream can be read: such a boundary then
	// denies, it never looks elsewhere.
	Fetchers FetcherSource

	// Revoked names signers that no longer count for anyone (see
	// SignerRevocations); nil revokes none.
	Revoked SignerRevocations

	// RegistryNames are names a signer may have addressed the subject's
	// registry by (the upstream's host, its name and aliases). They only
	// let a cosign simplesigning payload be predicted instead of read
	// (see predictSimpleSigning): a prediction counts only when it hashes
	// to the layer's digest, so no name here can change a verdict.
	RegistryNames []string
}

// LineageContext is where a subject sits in a lineage walk.
type LineageContext struct {
	// Dependencies verifies dependencies; nil means lineage cannot be
	// followed (a lineage rule then denies).
	Dependencies DependencyVerifier
	// Depth is the remaining lineage budget for this subject's own
	// dependencies. 0 on a root subject means "the boundary's depth"; on a
	// dependency (Chain non-empty) it means the budget is spent.
	Depth int
	// Chain lists the subjects from the root to this one's parent, as
	// "upstream/repository@digest", for cycle detection and messages.
	Chain []string
}

// DependencyRef is one OCI dependency named by a provenance statement.
type DependencyRef struct {
	Name       string  // the dependency's name in the statement (e.g. "dataset-train")
	URI        string  // as written, e.g. "oci://registry.example/ml/data@sha256:…"
	Registry   string  // registry host from the URI: a lookup key, never dialled as is
	Repository string  // repository at that registry
	Digest     v1.Hash // the pinned digest
}

// DependencyVerifier verifies lineage dependencies for the engine. The proxy
// implements it: it maps Registry to a configured upstream (lookup only;
// an unknown registry is a denied verdict, never a connection), fetches the
// manifest by digest and decides on it through the same verdict cache and
// shared verification as a pull, under the boundary that matches the
// dependency's own upstream and repository.
type DependencyVerifier interface {
	// VerifyDependency returns dep's verdict. lc is the dependency's own
	// lineage context (its remaining Depth and the Chain including the
	// parent), to be checked with AdmitDependency and put on the
	// dependency's Subject; a verdict shared or cached is keyed by
	// DependencyKey. An error means the dependency could not be decided
	// (the parent then fails closed).
	VerifyDependency(ctx context.Context, dep DependencyRef, lc LineageContext) (Verdict, error)
}

// Manifest is a manifest read from an upstream. Bytes hash to Digest.
type Manifest struct {
	Digest    v1.Hash
	MediaType types.MediaType
	Bytes     []byte
}

// Fetcher gives read access to evidence in one upstream. It is implemented by
// the proxy's upstream client; every method enforces its own size limits and
// honours ctx deadlines. Content returned by digest has been checked against
// that digest.
type Fetcher interface {
	// Referrers lists the referrers of digest through the OCI 1.1 API.
	// It returns ErrNoReferrersAPI when the registry does not implement it
	// (404 on the endpoint), so the caller can use the fallback tag.
	Referrers(ctx context.Context, repo string, digest v1.Hash) (*v1.IndexManifest, error)
	// Manifest fetches a manifest by tag or digest. ErrNotFound when absent.
	Manifest(ctx context.Context, repo, ref string) (Manifest, error)
	// Blob reads a whole blob of at most limit bytes; a larger one is an
	// error wrapping ErrTooLarge, not a truncation. ErrNotFound when
	// absent.
	Blob(ctx context.Context, repo string, digest v1.Hash, limit int64) ([]byte, error)
}

var (
	// ErrNotFound is returned by a Fetcher when the upstream says the
	// content does not exist (404 / MANIFEST_UNKNOWN / BLOB_UNKNOWN).
	ErrNotFound = errors.New("not found")
	// ErrNoReferrersAPI is returned by Fetcher.Referrers when the upstream
	// has no referrers endpoint.
	ErrNoReferrersAPI = errors.New("registry has no referrers API")
	// ErrTooLarge is wrapped by a Fetcher's error when a blob exceeds the
	// limit it was asked for. The engine then rejects that piece of
	// evidence (or, when the limit was what was left of the evidence
	// budget, stops reading) instead of failing to decide.
	ErrTooLarge = errors.New("content exceeds size limit")
)

// Mode says what a boundary does with a denial.
type Mode string

const (
	// ModeEnforce refuses denied content.
	ModeEnforce Mode = "enforce"
	// ModeWarn serves denied content but reports the would-be denial.
	ModeWarn Mode = "warn"
)

// Policy is the compiled, validated policy the Engine enforces. It is built
// from configuration by the command and never mutated afterwards.
type Policy struct {
	Boundaries []Boundary // first match wins
	// Fingerprint identifies this policy together with the bytes of all
	// trust material it references; a change gives a new fingerprint and so
	// new cache keys.
	Fingerprint string
	// InsecureAllowUnmatched allows subjects that no boundary matches
	// instead of denying them. It disables verification for everything
	// outside the configured boundaries.
	InsecureAllowUnmatched bool
}

// Boundary is one trust boundary: which repositories it covers and what
// evidence they need.
type Boundary struct {
	Name string
	// Upstream is the configured upstream name this boundary covers; "" or
	// "*" matches every upstream.
	Upstream string
	// Repositories are globs: "*" matches within one path segment, "**"
	// crosses slashes. Empty matches every repository.
	Repositories []string
	// ArtifactTypes, when non-empty, restrict the boundary to subjects whose
	// ArtifactType is listed.
	ArtifactTypes []string
	Mode          Mode
	// Threshold is how many distinct Authorities must verify, each by a
	// different signer (public key, or certificate identity and key).
	Threshold    int
	Authorities  []Authority
	Attestations []AttestationRule
	Lineage      *LineageRule
	// SignatureRepository is where signatures, and the attestations of
	// rules without their own Repository, are looked up; nil means the
	// subject's own repository.
	SignatureRepository *EvidenceRepository

	// Fingerprint identifies this boundary's rules and the trust material
	// they use; "" has the engine hash the boundary itself. Verdicts of
	// repositories this boundary cannot match do not depend on it (see
	// Engine.FingerprintFor).
	Fingerprint string
	// Refused, when set, makes this a stand-in for a boundary that could
	// not be loaded: every subject it matches is denied with this reason,
	// so its repositories never fall through to a later boundary.
	Refused string
	// Owner, Version, Source (the file it came from), Order and Problems
	// (of a newer version that was refused while this one was kept)
	// describe where the boundary came from; they do not decide.
	Owner, Version, Source string
	Order                  *int
	Problems               []string
}

// Authority is a named signer the boundary accepts: exactly one of Key,
// Keyless or Notation is set.
type Authority struct {
	Name     string
	Key      *KeyAuthority
	Keyless  *KeylessAuthority
	Notation *NotationAuthority
}

// KeyAuthority accepts signatures made with any of a set of public keys.
type KeyAuthority struct {
	TrustName string // the trust entry the keys came from
	// Keys are PEM public keys (ECDSA P-256/P-384, RSA, Ed25519), in the
	// order they were configured.
	Keys []NamedKey
}

// NamedKey is a public key with a stable name (its file path in config).
type NamedKey struct {
	Name string
	PEM  []byte
}

// KeylessAuthority accepts Fulcio-certified signatures whose certificate
// identity matches.
type KeylessAuthority struct {
	TrustName    string
	TrustedRoot  root.TrustedMaterial
	Issuer       string // exact; one of Issuer/IssuerRegex is required
	IssuerRegex  string
	Subject      string // exact SAN; one of Subject/SubjectRegex is required
	SubjectRegex string
	// TlogThreshold is the number of transparency-log entries required.
	TlogThreshold int
	// TimestampThreshold is the number of RFC3161 or tlog-integrated
	// timestamps required; at least one is always required. When both
	// thresholds are zero, both default to 1.
	TimestampThreshold int
	// SCTThreshold is the number of certificate-transparency SCTs embedded
	// in the certificate that must verify against the trusted material's CT
	// logs; 0 means the default of 1. Only InsecureSkipSCT turns the
	// requirement off.
	SCTThreshold int
	// InsecureSkipSCT accepts certificates without a verified embedded SCT.
	InsecureSkipSCT bool
}

// AttestationRule requires an attestation of one predicate type.
type AttestationRule struct {
	Name          string
	PredicateType string
	Authorities   []string // names of the boundary's authorities
	MaxAge        time.Duration
	Condition     string // CEL; compiled by the engine
	// Select says which of several valid attestations answers the rule:
	// SelectNewest ("" means newest) or SelectAny.
	Select Select
	// Repository is where this rule's attestations are looked up; nil
	// means the boundary's SignatureRepository (or, without one, the
	// subject's repository). Evidence read from any of a boundary's
	// places counts for whatever it verifies as.
	Repository *EvidenceRepository `json:",omitempty"`
}

// Select chooses among several valid attestations for one rule.
type Select string

const (
	// SelectNewest decides a rule on the newest valid attestation by signed
	// time (else statement time), so a newer failing attestation cannot be
	// masked by an older passing one.
	SelectNewest Select = "newest"
	// SelectAny is satisfied by any valid attestation that passes.
	SelectAny Select = "any"
)

// LineageRule makes the dependencies listed in provenance part of the
// decision.
type LineageRule struct {
	Depth   int
	Require []string // dependency name globs that must be present and verified
	// Ignore lists dependency name globs whose OCI inputs are deliberately
	// not verified; each one ignored is named in the verdict. Every other
	// OCI input is verified whether or not Require names it.
	Ignore []string
}

// Signer is one authority that verified the subject.
type Signer struct {
	Authority string `json:"authority"`
	Kind      string `json:"kind"` // "key" or "keyless"
	Identity  string `json:"identity,omitempty"`
	Issuer    string `json:"issuer,omitempty"`
	Key       string `json:"key,omitempty"`
	// KeyID is the hex SHA-256 of the DER public key of a key signer:
	// the key's identity whatever file or PEM form it came from, and what
	// a key revocation names.
	KeyID    string `json:"key_id,omitempty"`
	Evidence string `json:"evidence"` // "cosign-legacy", "sigstore-bundle", ...
}

// Verdict is a policy outcome. A denial is a Verdict with Allowed false and
// at least one Reason; errors are reserved for failures to decide.
type Verdict struct {
	Allowed  bool     `json:"allowed"`
	Mode     Mode     `json:"mode"`
	Boundary string   `json:"boundary"`
	Digest   string   `json:"digest"`
	Signers  []Signer `json:"signers,omitempty"`
	// Reasons say why the subject was denied, or why individual pieces of
	// evidence were rejected when it was allowed anyway.
	Reasons []string `json:"reasons,omitempty"`
	// Lineage lists the inputs of the provenance lineage was decided on:
	// followed OCI inputs with their verdicts, ignored ones marked
	// Ignored, and inputs that are not OCI artifacts, recorded only.
	Lineage   []Dependency `json:"lineage,omitempty"`
	CheckedAt time.Time    `json:"checked_at"`
	// Attestations lists, per satisfied attestation rule, the attestation
	// that satisfied it.
	Attestations []AttestationResult `json:"attestations,omitempty"`
	// Artifact is the kind of artifact the subject is (ArtifactKind), e.g.
	// "model" or "dataset"; empty for ordinary images.
	Artifact string `json:"artifact,omitempty"`
	// Limit names the limit that left evidence unread when the subject
	// was denied (LimitEvidenceBytes, LimitEvidenceItems); empty when no
	// limit had a part in the denial.
	Limit string `json:"limit,omitempty"`
	// Reads says how this verification got its evidence, for the
	// caller's metrics: it decides nothing and is neither cached nor
	// shown.
	Reads EvidenceReads `json:"-"`
}

// EvidenceReads counts how one verification got the cosign
// simple-signing layers of its .sig tags (see Subject.RegistryNames) and
// what leaving out cosign tags its places did not need last time saved
// or cost.
type EvidenceReads struct {
	// PredictedLayers matched a payload predicted from the subject's
	// registry names: their bytes needed no request to the upstream.
	PredictedLayers int
	// UnpredictedLayers matched no prediction and are read from the
	// upstream: signed under a name the subject's registry names do not
	// list, or with annotations.
	UnpredictedLayers int
	// SavedTags are .sig and .att tags not read ahead because the last
	// verification at their place did not need them, and not needed this
	// time either: upstream requests saved.
	SavedTags int
	// MissedTags were left out the same way but needed after all: the
	// run read each itself when it reached it, at most one round trip
	// later than reading ahead would have had it.
	MissedTags int
}

// AttestationResult is the attestation that satisfied one rule.
type AttestationResult struct {
	Rule          string `json:"rule"`
	PredicateType string `json:"predicate_type"`
	// Name is the predicate type's short name (PredicateName).
	Name   string `json:"name"`
	Signer Signer `json:"signer"`
	// Time is the signed timestamp of the attestation, else the time the
	// statement itself claims; zero when neither exists.
	Time time.Time `json:"time,omitzero"`
	// Digest is "sha256:<hex>" of the in-toto statement bytes the
	// signature covers: the attestation's identity whatever envelope or
	// registry layout carried it.
	Digest string `json:"digest,omitempty"`
}

// Dependency is one followed lineage edge.
type Dependency struct {
	Name    string   `json:"name"`
	URI     string   `json:"uri"`
	Verdict *Verdict `json:"verdict,omitempty"`
	// Ignored is set for an OCI input exempted by the lineage rule's
	// Ignore globs: listed, deliberately not verified.
	Ignored bool `json:"ignored,omitempty"`
}

// Served reports whether the proxy may serve the subject: allowed, or denied
// in warn mode.
func (v Verdict) Served() bool { return v.Allowed || v.Mode == ModeWarn }
