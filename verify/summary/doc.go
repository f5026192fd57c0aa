// Package summary makes the signed verification summaries Portcullis
// publishes for the digests it allowed: an SLSA Verification Summary
// Attestation (https://slsa.dev/verification_summary/v1) in an in-toto v1
// statement, signed into a DSSE envelope inside a sigstore bundle v0.3,
// and the OCI 1.1 referrer manifest that carries the bundle the way
// cosign v3 attaches an attestation. `cosign verify-attestation --key`
// with the summary key's public half accepts it.
//
// The package is pure: no HTTP, no logging, no state beyond the signing
// key. Where a summary is served from, and how long it lives, is the
// proxy's business.
//
// # What it guarantees
//
// Sign refuses anything but an enforce-mode allow decided under a named
// boundary about exactly the subject digest, so no caller can turn a
// denial, a warn-mode verdict or an allow of an unmatched repository into
// a signed PASSED. The statement's policy digest is the policy fingerprint
// the verdict was decided under; its time is the verdict's.
//
// # What it trusts
//
// The verdict it is handed: a summary says what the verifier decided, it
// does not verify again. The signing key is the operator's, loaded once at
// start; bundles carry only a public key hint and no transparency log
// entry or timestamp, since Portcullis signs offline.
package summary
