// Package tufroot keeps a sigstore trusted root (trusted_root.json) fresh
// through a TUF repository, for keyless authorities whose trust entry
// says trusted_root: {tuf: ...}.
//
// Trust: the only thing trusted is the pinned root.json from the
// configuration. Everything else, from the network or from the cache
// directory, is read through size limits and goes through go-tuf's
// checks (signatures and thresholds of every role, root rotation one
// version at a time, version rollback, expiry, target length and
// hashes) before it is used. The cache is never trusted as it lies on
// disk: a start from it replays the root chain from the pinned root and
// verifies the cached metadata exactly as a fetch would.
//
// Guarantees: a trusted root is handed out only while the TUF metadata
// that vouched for it has not expired; past that, and when none was ever
// fetched, the material handed out verifies nothing, so keyless
// verifications under that trust entry fail closed. A failed refresh
// keeps the last good root until that expiry.
package tufroot
