// Package verify decides whether a manifest digest may be served: it finds
// the signatures cosign and other sigstore clients store next to the
// manifest, verifies them against a Policy, and returns a Verdict.
//
// The package is pure. It reads evidence only through the Fetchers it is
// given, never dials the network itself, never logs, and keeps no state
// between calls beyond the compiled policy.
//
// # What it trusts
//
// Nothing read through the Fetcher is trusted. Manifests and blobs are
// re-checked against their digests, parsed strictly and through size
// limits, and a piece of evidence that cannot be parsed is reported as a
// rejected piece of evidence, never as an allow. Trust comes only from the
// Policy: public keys of key authorities, and for keyless authorities a
// sigstore trusted root (Fulcio CAs, Rekor logs, timestamp authorities)
// plus a certificate identity (issuer and subject, exact or regular
// expression).
//
// # Evidence
//
// For a subject digest the engine reads: the OCI 1.1 referrers of the
// digest, the "sha256-<hex>" fallback tag index, and the cosign legacy
// "sha256-<hex>.sig" manifest, in the subject's repository or where the
// boundary keeps its evidence (EvidenceRepository: another repository,
// perhaps on another upstream read through Subject.Fetchers). The place
// changes only where evidence is looked up, never what it must sign. Each listed referrer is opened; labels in
// an index are never enough to select or discard evidence. Sigstore
// bundles v0.1 to v0.3 (message signatures and DSSE envelopes) and
// simplesigning layers are understood. The signed digest must be the
// subject digest: the simplesigning docker-manifest-digest, a subject of
// the in-toto statement, or the message signature digest. The signed
// docker-reference is not compared, because it names whatever registry
// host was used at signing time. A simplesigning layer may be predicted
// instead of read (Subject.RegistryNames): the payload cosign writes for
// the subject under each name is used only when it has the layer's
// declared size and hashes to its digest, which is what a read of the
// layer by digest must return, and it is charged to the budget as a read.
//
// A DSSE envelope's in-toto statement is parsed once, strictly, from
// exactly the payload bytes its signature covers, and only after that
// signature verified under one of the boundary's authorities: what no
// authority signed is rejected for its signature and never parsed. Its
// predicate type, subject and predicate all come from that one reading,
// and annotations naming a predicate type are never trusted. The
// predicate is kept as bytes and parsed only when a rule reads it (a
// condition, a statement time, a model signature's files, lineage's
// dependencies); a predicate nesting deeper than the depth limit is
// rejected before anything is parsed. A
// DSSE bundle counts as a signature when its statement names the digest,
// as for cosign verify --key, attestations included; a bundle whose
// statement does not parse (an unknown statement type, no subject, a
// predicate that is not an object or nests too deeply) names nothing and
// counts for nothing,
// with a reason saying so. Every DSSE envelope, in a bundle or a legacy
// layer, key-signed or keyless, is verified by sigstore-go; an envelope
// with several signatures is accepted when one of them verifies, as
// cosign accepts it. Only simplesigning layers signed by a key are checked
// directly against the key.
//
// Key authorities accept signatures without a transparency log entry or
// timestamp (cosign --tlog-upload=false). Keyless authorities always
// require the configured number of log entries and observed timestamps,
// and the certificate must chain to the trusted root's Fulcio CAs at one
// of those times. The certificate must also carry SCTThreshold embedded
// signed certificate timestamps (default and minimum 1, as cosign
// requires) from the trusted root's CT logs; a threshold of 0 means the
// default, and only InsecureSkipSCT (insecure_skip_sct in configuration)
// turns the requirement off. The certificate identity is then matched by
// sigstore-go's identity policy: the OIDC issuer extension and the SAN,
// each exactly or by regular expression. A regular expression matches
// anywhere unless it is anchored, so configurations anchor them as ^…$
// (config check warns).
//
// # Bounds
//
// Evidence is read one piece at a time, verified as it is read and
// dropped unless it decided something (a signer counted, an attestation a
// rule may still need), so memory follows the evidence that verified, not
// what was listed. Reading stops as soon as every decision is made: the
// threshold met, every select-any rule satisfied, and no select-newest
// rule or provenance-less lineage rule waiting (those need every piece of
// evidence). Three limits bound the rest (WithEvidenceLimits,
// WithMaxEvidence):
//
//   - a byte budget per verification (default 16 MiB) over everything
//     read: referrer manifests, the fallback index, the legacy .sig and
//     .att manifests and every blob. The referrers listing itself is
//     bounded by the Fetcher. Lineage dependencies are verified by calls
//     of their own, each with its own budget;
//   - per item: 1 MiB for a signature (a message-signature bundle, a
//     simplesigning payload), 4 MiB for an attestation (a DSSE bundle, a
//     legacy .att envelope) and for an evidence manifest. A descriptor
//     declaring more is rejected without being read; a blob larger than
//     its descriptor said is cut at the limit (Fetcher.Blob, ErrTooLarge)
//     and rejected;
//   - at most WithMaxEvidence referrers and layers of each legacy tag
//     (default 64).
//
// A piece of evidence over its item limit is only rejected evidence. When
// a limit leaves evidence unread while a decision still needs it, the
// subject is denied: for the budget with the reason "evidence budget
// exceeded: read … of evidence in N items, limit …"; a select-newest rule
// or a lineage rule that needs the newest provenance is then "not
// decided". The verdict names the limit in Verdict.Limit
// (LimitEvidenceBytes, LimitEvidenceItems); it is a policy outcome, never
// an error.
//
// # Concurrency
//
// Evidence is taken one piece at a time, but fetched ahead: a place's
// referrers, fallback tag and cosign tags at once (readahead.go), and, through
// ReadAhead, the subject's own places while its caller still fetches the
// manifest. A read ahead is answered only when the run asks for it, in
// the order it always asks, and charged then, so verdicts are those of
// reading in order. Reads ahead are bounded apart from the budget too: a
// fixed few per place, EvidenceFanout in flight, their declared sizes
// reserved next to what the run has spent. What a place lists (referrers,
// a tag's layers) is never read ahead: which of it the run opens depends
// on what came before. The one state an Engine keeps between Verify calls
// serves only this: which cosign tags the last run at each place needed
// (tagmemory.go), so tags a repository never uses are not read ahead, and
// whether its .sig tag alone decided, so a run that needs only signatures
// reads that tag first there and, when it decides again, never asks for
// the index. It can cost a run a round trip. It never changes whether a
// subject is allowed, except that evidence listed in an index a .sig
// tag made unnecessary can no longer spend the budget; which of several
// valid signers an allow names, and which rejected evidence it mentions,
// may differ.
//
// The dependencies of one subject are verified concurrently, at most
// WithLineageConcurrency at once, and reported in the provenance's order.
// The first denied (or undecidable) one ends the others: the subject is
// denied (or fails) at once, whatever they would have said.
//
// # Threshold
//
// A boundary's Threshold counts authorities, each satisfied by a different
// signer. One piece of evidence counts for one authority at most; the same
// signature found twice (a repeated layer, one bundle under two referrers)
// counts once; and a signer already counted for one authority (the same
// public key, or for certificates the same issuer and SAN, or the same
// certificate key) counts for no other, so two keyless authorities whose
// identity patterns overlap cannot be met by one workflow signing twice.
// New refuses two authorities of one boundary holding the same public
// key, compared by the SHA-256 of its DER encoding, not by file name.
//
// # Attestations
//
// A boundary may require attestations (AttestationRule): in-toto
// statements (v0.1, as cosign attest writes, or v1) in DSSE envelopes,
// found in sigstore bundles among the referrers and the fallback index,
// and in cosign's legacy "sha256-<hex>.att" tag, which is read only when
// the boundary has attestation or lineage rules. Legacy attestations never
// count towards the signature threshold, because cosign verify does not
// read them; DSSE bundles whose statement names the subject do, as they
// do for cosign.
//
// An attestation is valid for a rule when it has the rule's predicate
// type, its envelope verifies under one of the authorities the rule names
// (all of the boundary's when it names none), and its statement subject is
// the manifest digest. Its time is the verified signing time (log
// integration or RFC3161 timestamp) when there is one, else the time the
// signed statement claims for itself (SLSA finishedOn/startedOn, VSA
// timeVerified): for key-signed attestations without a timestamp the
// signer's own claim is all there is. Which valid attestation answers the
// rule depends on its Select:
//
//   - SelectNewest ("newest", the default): the newest valid attestation
//     decides and must pass, so a newer failing scan is not masked by an
//     older passing one. An attestation without any time counts as the
//     oldest; one whose time is more than five minutes in the future is
//     not valid; when several share the newest time, each of them must
//     pass. Older valid attestations are not considered, and the reason
//     says how many were passed over.
//   - SelectAny ("any"): any valid attestation that passes satisfies it.
//
// To pass, an attestation must be no older than MaxAge and the rule's CEL
// condition must be true for it. Conditions are compiled in New and
// evaluated with a cost limit; an evaluation error fails the rule. Every
// rule must hold, in addition to the signature threshold.
//
// # Model signing
//
// An OpenSSF model signature (PredicateModelSigning) names a hash over the
// model's files rather than the manifest, so it does not count as a
// signature, and for that predicate type the subject check is replaced by
// a comparison of the signed file list with the manifest: every layer
// must be a raw file layer whose org.cncf.model.filepath names a signed
// file with the same sha256 digest, and every signed file must have its
// layer. A layer without the annotation, a packed layer, an unsigned file
// or a signed file without a layer fails the rule with a reason naming
// it. The config blob is not a layer and need not be signed; it is bound
// by the manifest digest, which the signature threshold covers.
//
// # Lineage
//
// A LineageRule makes the inputs listed in a verified SLSA provenance
// statement (v1 resolvedDependencies, v0.2 materials) part of the
// decision. The provenance is the one that satisfied the boundary's
// provenance rule, or without such a rule the newest valid provenance a
// boundary authority signed about the subject; lineage is followed only
// after the signatures and every rule passed. An input's name is its name
// in v1 provenance, else the last path segment of its repository (for an
// OCI input) or of its URI.
//
// Every OCI input, pinned by sha256 digest, is verified whatever its
// name, through the Subject's DependencyVerifier, under the boundary that
// matches it (the proxy maps the registry named in the statement to a
// configured upstream; the name is a lookup key, never an address to
// dial). Silence is never success: an input no glob names is verified
// like any other. Require globs name inputs that must also be present;
// a required input that is missing, or is not an OCI artifact, denies.
// Ignore globs exempt inputs deliberately: an ignored OCI input is listed
// in Verdict.Lineage with Ignored set and is not verified; a name matched
// by both lists is required. An "oci://" input without a verifiable
// digest denies unless it is ignored. Inputs that are not OCI artifacts (git, URLs) are
// recorded in Verdict.Lineage and never fetched.
//
// The walk is bounded by the rule's depth (1 to MaxLineageDepth), by
// WithMaxDependencies per subject and by the caller's context; a
// dependency already on the chain is a cycle and denies. A denied
// dependency denies its parent with a reason naming the chain
// ("ml/llm@sha256:… ← datasets/corpus@sha256:…: why"); a dependency that
// cannot be decided makes Verify return an error.
//
// # Models and datasets
//
// ClassifyManifest recognises CNCF ModelPack, KitOps ModelKit, Docker
// model and Ollama manifests, and datasets packaged the same way; the
// kind is reported in Verdict.Artifact and never decides trust.
//
// # Outcomes
//
// A denial is a Verdict with Allowed false and reasons naming each piece
// of evidence and why it was rejected; it is a policy outcome and may be
// cached. Verify returns an error only when the policy could not be
// evaluated: a Fetcher failure other than ErrNotFound, ErrNoReferrersAPI
// or ErrTooLarge, a DependencyVerifier failure, or a cancelled context.
// Callers must then fail closed without caching.
package verify
