// Package wire translates a validated configuration into the option types
// of the packages that do the work: proxy.Upstream values (URLs, CA pools,
// timeouts, credentials as a keychain) and a compiled verify.Policy (trust
// material loaded from disk, boundaries, attestation and lineage rules, and
// the fingerprint that keys the verdict cache).
//
// It is the only place that sees both config and the runtime packages, so
// proxy and verify never depend on YAML types. What it trusts: the config
// file and the files it names (keys, trusted roots, CA bundles, docker
// config) are the operator's; secrets come from environment variables or a
// docker config and are never printed — errors name the variable or file,
// not its value. Credentials are bound to their upstream's registry host, so
// a keychain never answers for another host. The policy fingerprint covers
// the policy sections of the config and the bytes of every trust file, so
// changing either gives new cache keys rather than stale verdicts.
package wire
