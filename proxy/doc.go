// Package proxy is the registry API front end of Portcullis: the only
// package that speaks HTTP to clients. It serves the read-only part of the
// OCI distribution API (GET /v2/, manifests, blobs, referrers, tags/list)
// by pulling through configured upstreams, and serves a manifest only when
// a Verifier has allowed its digest.
//
// # Trust
//
// Clients and upstreams are both untrusted. Request paths are parsed
// strictly before anything is looked up: traversal, escaped or doubled
// slashes, names outside the distribution grammar, digests of algorithms
// other than sha256 and sha512, and malformed tags are refused with 400.
// The ?ns= parameter and a leading path component are lookup keys into the
// configured upstream list, never addresses: an unknown one is answered
// NAME_UNKNOWN without dialling anything. Upstream answers are read through
// size limits (4 MiB for manifests and listings, 64 KiB for error bodies)
// and manifests are parsed strictly; a manifest that does not parse is
// denied, never allowed.
//
// The proxy pulls with the upstreams' credentials, so who may pull through
// it is its own decision (WithClientAuth): a client is authenticated
// (bcrypt htpasswd, hashed static tokens, verified client certificates)
// before its request is routed, and authorised on the upstream and
// repository right after routing, before anything is asked upstream, so a
// refusal says nothing about whether the content exists. Secrets are
// compared in constant time and never logged; the principal is. The admin
// listener has its own tokens (WithAdminTokens); health probes stay open.
//
// # What is guaranteed about served bytes
//
// Verdicts are about digests. A tag is resolved to a digest at the
// upstream, the digest is verified (or its verdict taken from the cache),
// and the manifest bytes served are exactly bytes that hash to that digest:
// they are checked when fetched, stored only after the check, and checked
// again before they are written; bytes that fail that last check are a
// fail-closed denial like any other. A child of an index that was allowed
// in enforce mode is served on the index's verdict (reported as
// covered_by, still digest-checked) only when the child, matched on its
// own repository and artifact type, falls in the same boundary as the
// index, and only while that verdict lasts (WithCoverageTTL, the allow
// TTL). Coverage is keyed like the verdict: the fingerprint of the policy
// and trust material that can decide the repository (FingerprintFor),
// upstream, repository and digest. Any other child, and every child of an
// index served in warn mode, is verified on its own under its own
// boundary and mode. With blob gating (the default) a blob is served only when
// a manifest served in the same repository of the same upstream references
// it; any other blob is denied without contacting the upstream. Blob bodies
// are streamed, not buffered; the upstream client hashes a full blob as it
// streams and a mismatch aborts the connection, so a client never receives
// a complete response with the wrong bytes.
//
// A blob no allowed manifest references is denied (and recorded as a
// decision) after one upstream HEAD that tells it from a missing blob; in a
// repository every boundary of which is in warn mode it is served and
// recorded as a would-be denial.
//
// # Evidence and referrers
//
// Signatures, attestations and SBOMs are mostly unsigned themselves. A
// manifest made only of evidence media types (WithEvidenceTypes), about a
// digest that is served in the same upstream and repository (by its
// subject field or cosign's sha256-<hex>[.sig|.att|.sbom] tags), is served
// as evidence of that digest, with that digest's decision; it is never
// verified as content and never vouches for anything: a fallback index
// served as evidence covers none of its children. Media types say nothing
// of the bytes under them, so evidence is served only when fetched by
// digest or by cosign's tags (never under a tag a loader pulls), only up
// to a bound on what its config and layers declare
// (WithServedEvidenceBytes), and only once its blobs, read from the
// upstream and checked against their digests, parse strictly as the
// formats their media types name (checkEvidenceShape): a model file under
// an evidence label is not evidence. Otherwise the manifest keeps its own
// verdict. Referrers listings are
// re-encoded from a strict parse of the upstream's API answer or, where
// the upstream has no API, of its fallback index, and filtered here by
// artifactType whatever the upstream claims. Verification summaries
// (WithSummaries) are signed only for an enforce-mode allow, served only
// while that verdict is cached, and never written upstream.
//
// Concurrent requests for the same unverified digest share one
// verification. One client hanging up does not fail the others; when every
// client waiting for it has left, the verification is cancelled and nothing
// it decided is cached. At most a configured number of verifications run at
// once (lineage dependencies run inside their parent's slot, so a parent
// never waits on a slot its own children need); the rest wait in a bounded
// queue or are answered 429 TOOMANYREQUESTS with Retry-After.
//
// A revocation (Revocations) outranks every verdict, cached or not: each
// manifest decision is checked against the list in force, a revoked key or
// keyless identity is withheld from the Verifier so the threshold is
// decided again without it, and a change purges the verdicts, coverage,
// blob gating and evidence links that rest on it. Refresh-ahead
// (WithRefreshAhead) re-verifies pulled allows before they expire, in the
// background, on free verification slots only.
//
// # Lineage
//
// The proxy is the Verifier's verify.DependencyVerifier: when a boundary
// requires the dependencies named in a subject's provenance to be verified,
// the Verifier asks the proxy for each one's verdict. The provenance is
// trusted only as far as the Verifier has verified it; the proxy treats
// the dependency references it names as untrusted input. A dependency's
// registry is a lookup key into the configured upstreams, exactly like
// ?ns=: a registry that is not configured yields a denied verdict naming
// the configured upstreams and nothing is dialled, so signed metadata
// cannot make the proxy connect to a host of its choosing. The repository
// and digest are checked against the same grammars as a client's path. The
// manifest is then fetched by digest from the dependency's own upstream,
// digest-checked, and decided on under the boundary that matches that
// upstream and repository, through the same verdict cache and shared
// verification as a pull. A dependency the upstream does not have is a
// denial; an upstream that cannot be reached is a failure to decide, which
// fails the pull closed and is not cached. A denial's reasons name the
// chain from the pulled subject down to the dependency at fault.
//
// Dependency verdicts are keyed by the remaining lineage depth as well, a
// key space pulls never use, and a dependency verification only ever
// waits on dependency verifications of strictly smaller depth. Waits
// between shared verifications therefore go from a pull to a dependency or
// down in depth, which cannot form a cycle, so two concurrent pulls whose
// provenances name each other cannot deadlock (see VerifyDependency).
//
// # Status codes
//
// Container runtimes treat a mirror's failure as a reason to try the next
// mirror or the origin registry, which would route around the proxy. The
// status codes are chosen with that in mind:
//
//   - A policy denial is 403 DENIED, with the boundary, digest and reasons
//     in the error detail. HEAD is enforced like GET.
//   - A failure to decide (verifier error, timeout, the upstream failing or
//     sending wrong bytes after the digest was fixed) is also 403 DENIED,
//     "could not verify … (fail closed)". It is never cached, so the next
//     request tries again.
//   - While resolving a tag, before any content is known, an upstream that
//     is unreachable, times out, answers 5xx or answers nonsense gives 502.
//     A 404 stays 404 (MANIFEST_UNKNOWN or BLOB_UNKNOWN, with the upstream's
//     diagnostics when it sent a valid OCI error envelope), and 401, 403
//     and 429 are passed on with the upstream's status and envelope.
//   - Every write method is 405 UNSUPPORTED; unknown paths are 404.
//   - Anything unexpected is 500 UNKNOWN without internal detail.
//
// # Bounds
//
// Clients and upstreams are untrusted for resources too. A client that
// takes no byte for the idle timeout is dropped (Serve sets the deadline
// on the connection, renewed on progress); a stream whose client has read
// nothing for the stall grace is dropped sooner when another pull needs
// its upstream connection; the client connections, header bytes and large
// stream buffers held at once are capped. Verifications running at once
// are bounded, with a bounded queue and 429 TOOMANYREQUESTS beyond it.
// Every bound that trips is logged and counted; none of them is a verdict.
//
// # Observability
//
// Each request is logged once when it ends. Each manifest decision is an
// audit event on the logger named "audit" (allow, deny or warn, with the
// signers, reasons, whether it was cached and the covering index), a
// metric, and an entry in the /v1/decisions list of AdminHandler. A digest
// that was allowed before and is denied now is reported as drift. Request
// headers are never logged.
package proxy
