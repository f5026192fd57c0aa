// Package hostile holds what the benchmark and the soak test both need to
// attack a running Portcullis and to watch what the attack costs it:
//
//   - evidence bombs pushed to an upstream: a subject whose referrers are
//     many near-limit sigstore bundles that parse but do not verify for it,
//     and a subject whose attestations carry a predicate of millions of
//     empty JSON objects;
//   - a flood of requests for random digests abandoned after a short time,
//     against a tarpit upstream that never answers;
//   - stalled clients that ask for a large allowed blob and never read;
//   - the resident memory, peak, open file descriptors and threads of a
//     process from /proc, its goroutines from /metrics, and a memory
//     watchdog that stops a process before it takes the machine down.
//
// Starting, readying and tearing down the processes it attacks is
// test/internal/harness's part. It is test code: it signs with
// test/fixtures keys and speaks plain HTTP on loopback.
package hostile
