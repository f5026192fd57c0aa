// Package verify decides whether a manifest digest may be served: it finds
// the signatures cosign and other sigstore clients store next to the
// manifest, verifies them against a Policy, and returns a Verdict.
//
// The package is pure. It reads evidence only through the Fetcher it is
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
// For a subject digest the engine reads, within a bounded budget
// (WithMaxEvidence): the OCI 1.1 referrers of the digest, the
// "sha256-<hex>" fallback tag index, and the cosign legacy
// "sha256-<hex>.sig" manifest. Each listed referrer is opened; labels in
// an index are never enough to select or discard evidence. Sigstore
// bundles v0.1 to v0.3 (message signatures and DSSE envelopes) and
// simplesigning layers are understood. The signed digest must be the
// subject digest: the simplesigning docker-manifest-digest, a subject of
// the in-toto statement, or the message signature digest. The signed
// docker-reference is not compared, because it names whatever registry
// host was used at signing time.
//
// Key authorities accept signatures without a transparency log entry or
// timestamp (cosign --tlog-upload=false). Keyless authorities always
// require the configured number of log entries and observed timestamps,
// and the certificate must chain to the trusted root's Fulcio CAs at one
// of those times. Signed certificate timestamps are not required.
//
// # Outcomes
//
// A denial is a Verdict with Allowed false and reasons naming each piece
// of evidence and why it was rejected; it is a policy outcome and may be
// cached. Verify returns an error only when the policy could not be
// evaluated: a Fetcher failure other than ErrNotFound or ErrNoReferrersAPI,
// or a cancelled context. Callers must then fail closed without caching.
package verify
