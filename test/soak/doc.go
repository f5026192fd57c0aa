// Command soak runs Portcullis, built from this tree, as a subprocess
// under a long mixed load while its upstream is killed and restarted and a
// hostile client set attacks it, and reports whether its resources stay
// bounded and whether it ever served a byte it should not have.
//
// The load: 64 clients (by default) pulling allowed manifests by tag and
// by digest, HEAD by tag, denied and unknown manifests, allowed and denied
// blobs. The hostile set: evidence and predicate bombs, floods of
// abandoned requests for random digests through a tarpit upstream, and
// hundreds of clients that ask for a 16 MiB allowed blob and never read.
// The upstream (distribution's docker-registry when installed, else this
// program re-executed as a registry with blobs on disk and a manifest
// journal) is killed with SIGKILL and restarted on the same port twice.
//
// Every 200 answer is checked: a manifest body must hash to a digest the
// harness pushed as allowed (and to the one asked for), a blob body to its
// digest and length; a denied or unknown subject must only ever get 403,
// 404, 429 or 5xx. The report gives requests served, errors by kind, the
// proxy's RSS, goroutines and open descriptors at start, middle, end and
// after the load stops, and PASS/FAIL for each check.
//
// Usage:
//
//	go run ./test/soak [-duration 10m] [-clients 64] [-out FILE] [-portcullis PATH]
//	                   [-hostile bomb,flood,stall] [-rss-limit MiB] [-settle 5m]
//	                   [-upstream auto|distribution|builtin] [-restarts 2]
//
// It is not part of `make test`; `make soak SOAK_DURATION=2m` runs it.
package main
