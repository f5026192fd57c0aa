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
//   - An answer's status line and headers are read through
//     Config.MaxHeaderBytes (64 KiB by default, against net/http's 10 MiB),
//     from the upstream and every host it redirects to; past it the
//     connection is dropped (ErrHeadersTooLarge over HTTP/1.1; over HTTP/2
//     net/http reports a protocol error).
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
// The ping's answer (the registry's auth challenge; a 200 or 401 only)
// is kept for ten minutes and shared by all repositories, so a repository
// seen for the first time costs at most one token exchange. The per-repository transports live in a 2Q cache: a
// flood of random repository names passes through its small queue of
// once-used entries and does not evict repositories that are pulled again.
//
// # Addresses
//
// The upstream decides where redirects (and its token realm) point, so it
// could aim the proxy at the proxy's own network: 127.0.0.1, a private
// service, the cloud metadata address. The default transport dials the
// upstream's own host freely; any other host is checked at dial time, on
// the address actually connected to after name resolution (so DNS
// rebinding cannot pass), and refused with a *RedirectRefusedError
// (ErrRedirectRefused) when it is loopback, private (RFC 1918,
// fc00::/7), link-local (169.254.0.0/16, fe80::/10), multicast,
// unspecified, shared (100.64.0.0/10) or reserved, including IPv4-mapped,
// NAT64 and 6to4 forms of these. It is allowed anyway when the upstream's
// own host is itself such an address (a registry and its storage in one
// private network; a host name is looked up to decide, and the answer
// kept for five minutes), or when the host matches Config.RedirectHosts.
// Through an HTTP proxy from the environment the proxy resolves names, so
// only literal addresses can be refused (before the request is sent); the
// proxy's own address is the operator's choice and is not checked. A
// custom Config.Transport does its own dialling and gets none of this.
//
// # Limits
//
// Config.MaxConns caps connections per host (default 64), the upstream's
// and each storage host's; a request that finds them all busy waits for
// one within its timeout and then fails with ErrConnLimit. The cap holds
// separately for OpenBlob, whose connections last as long as a client
// takes to read, and for everything else, so streams to clients that stop
// reading cannot take the connections verification needs. A response
// body that receives no byte for Config.IdleTimeout (default 30s) while
// it is being read is aborted with ErrUpstreamStalled; time the caller
// spends between reads (writing to a slow client) does not count.
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
