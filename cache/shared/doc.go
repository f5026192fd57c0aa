// Package shared keeps decision state that several proxy replicas share
// through Redis: verdicts (Verdicts, an L2 behind the in-process cache),
// verified manifest bytes (Manifests, content-addressed: taken only when
// they hash to the digest asked for), blob gating (with, for each open
// blob, an opaque origin naming the decision that opened it) and index
// coverage (Gating), and the leases that have one
// replica verify a digest while the others wait for its verdict (Leases);
// and it broadcasts revocation changes and reloads between them (Bus). It
// knows nothing of HTTP.
//
// # What it trusts
//
// Nothing it reads from Redis. Anyone who can write to the Redis the
// proxies use could otherwise plant an allow, so Redis must be private to
// the proxies (network policy, ACL credentials, TLS), and every value read
// back is still treated as untrusted input: read through a size limit,
// parsed strictly (a versioned JSON document with exactly the expected
// fields; anything unknown, extra or missing is rejected) and bound to the
// key it was read for (the value embeds the SHA-256 of its logical key, so
// a valid value copied under another key is refused). A rejected value is
// a miss, counted in portcullis_shared_errors_total{kind="invalid"}.
//
// # What it guarantees
//
//   - Redis never turns a miss into an allow by failing: every call is
//     bounded by a short timeout, and an error, a timeout or an open
//     circuit is a miss. The replica then decides alone from its local
//     state, exactly as a single replica does, and never denies what it
//     could verify itself.
//   - Guard tracks Redis's health: after a few consecutive failures it
//     skips Redis for a short backoff, then tries again, so sharing resumes
//     by itself when Redis returns. The outage is logged once when it
//     starts and once when it ends, and shown in /readyz detail; readiness
//     stays OK.
//   - Entries expire in Redis with the lifetime they have locally, and a
//     value read back never lives longer locally than it had left.
//
// # Topologies
//
// NewClient reaches one server, a master through Sentinel or a Redis
// Cluster, and everything here works the same on each. Reads and writes go
// to masters only: a replica lags, and a lease or verdict read there may
// already be gone. On a cluster no command spans slots: each names one key
// and batches are pipelines the client splits by node (never MGET or a
// multi-key DEL); the lease scripts touch only their KEYS[1]; a
// revocation's hash write and its PUBLISH share one transaction on the
// hash's node (PUBLISH has no key and reaches every node's subscribers);
// SCAN, which sees only the node it runs on, runs on every master; and the
// epoch marker is kept on every master, since one master can lose its
// share of the keys alone. A failover may lose the last writes (Redis
// replicates asynchronously): what is lost is a miss, verified or written
// again, never an allow.
package shared
