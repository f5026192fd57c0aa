// Package cache holds the proxy's in-memory caches: policy verdicts by key
// (Verdicts) and verified manifest bytes by digest (Manifests). It knows
// nothing of HTTP, never logs, and uses package verify only for its types.
//
// # What it trusts
//
// The cache does not decide anything. A verdict is returned exactly as it
// was added, under exactly the key it was added with; the caller builds keys
// that cover everything the decision depended on (policy and trust-material
// fingerprints, upstream, repository, digest), so a change of policy yields
// new keys rather than stale answers. Only policy outcomes belong in
// Verdicts: a failure to decide is an error at the caller and must never be
// stored as a verdict.
//
// Manifests are content addressed. Add re-hashes the bytes and refuses a
// manifest that does not match its digest, so a cached manifest is always
// the content its digest names.
//
// # What it guarantees
//
//   - Verdicts holds at most its configured number of entries and never
//     returns an entry past its lifetime: the allow TTL for an allowed
//     verdict, the deny TTL for a denial.
//   - Manifests never holds more than its byte budget; a manifest that alone
//     exceeds the budget is not cached.
//   - Both are safe for concurrent use. Values handed to Add and returned by
//     Get share their slices with the cache and are treated as immutable.
package cache
