// Package mirrorconfig generates container runtime configuration that makes
// a Portcullis proxy the only way to the registries it fronts.
//
// A proxy that denies unsigned content only protects a node if the runtime
// cannot go around it. containerd and CRI-O both treat a mirror as an
// optimisation: when a mirror answers 4xx or is down they try the next one
// and finally the real registry, so a DENIED from the proxy would turn into a
// silent pull from upstream. The files generated here close that hole:
//
//   - containerd (hosts.toml): the proxy is the server as well as the only
//     host, so the fallback containerd takes after its hosts fail is the proxy
//     again. The [host] entry is required even though it repeats the server,
//     because containerd 1.6 ignores a file that only sets server. containerd
//     names the original registry in the ?ns= query parameter, which the
//     proxy uses to route.
//   - CRI-O and podman (registries.conf drop-in): each registry prefix is
//     rewritten to a location on the proxy (path-prefix routing,
//     proxy/<registry>/<repository>) and no mirror is listed, so the real
//     registry is never contacted.
//   - containerd 2.x image verifier (ContainerdVerifier): for pulls that no
//     mirror file covers, a config.toml fragment for the bindir verifier
//     plugin, the wrapper script it runs and the settings of
//     "portcullis node-verifier", which asks the proxy's admin API.
//
// The generator trusts only its arguments and validates them strictly: the
// proxy must be an http or https URL with nothing but a host and port, and
// each registry must be a host name with an optional port. Everything
// written into TOML is quoted, so no argument can add keys or tables.
package mirrorconfig
