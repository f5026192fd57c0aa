// Package upstream is the proxy's client for one upstream OCI registry.
//
// # Trust
//
// The upstream is not trusted. Everything it sends is read through a size
// limit and checked before it is handed on:
//
//   - A manifest is read through MaxManifestBytes, hashed with the algorithm
//     of the requested digest (sha256 or sha512; anything else is refused)
//     and compared with that digest, or with Docker-Content-Digest when it
//     was fetched by tag. A mismatch is ErrDigestMismatch and the bytes are
//     never returned. Content-Length is only used to refuse early, never to
//     size an allocation.
//   - A full (200) blob stream is hashed while it is read and fails at its
//     end with ErrDigestMismatch when the bytes are not the requested blob,
//     so a caller streaming it on can abort instead of completing it. So is
//     a 206 whose Content-Range spans the whole blob. A 206 to a request
//     without Range is refused (ErrUnexpectedPartial). A 206 for a part of
//     the blob cannot be checked against the digest of the whole and is
//     passed as it is, framed to its Content-Range.
//   - A blob body never yields more bytes than its length (the caller's
//     descriptor size, Content-Length, the Content-Range, or a HEAD's
//     Content-Length when the 200 has none): a longer or endless body
//     fails with ErrTooLarge before any byte past it is returned.
//   - Error bodies are kept up to 64 KiB for diagnostics.
//
// # Credentials
//
// Authentication is go-containerregistry's transport: the /v2/ ping and the
// bearer-token exchange happen lazily on the first call for a repository,
// scoped to pulling that repository, and the resulting transport (which
// refreshes its token itself) is kept in a bounded cache. Credentials are
// only ever attached to requests for the configured registry host.
// Redirects are followed by this package, not by net/http: a hop to any
// other host (typically blob storage) is sent through the bare transport
// with no Authorization header and with any userinfo in the Location
// removed. Plain http is refused unless the upstream is configured
// Insecure, including on redirects.
//
// # Deadlines
//
// Every call is bounded by Config.Timeout. For manifests, referrers and
// other pass-through API calls the timeout covers the whole exchange,
// body included. For blob streams (OpenBlob) it covers only getting the
// response headers; the body is then bounded by the caller's context alone,
// because a large blob may legitimately take much longer than any fixed
// timeout, and the caller's context ends when its own client goes away.
// Blob, which reads a whole blob for verification, applies the timeout to
// the whole read.
package upstream
