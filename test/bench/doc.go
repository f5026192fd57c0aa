// Command bench measures Portcullis side by side with the registries users
// would otherwise run: a plain distribution registry (the direct upstream)
// and distribution in pull-through proxy mode. Everything runs on loopback
// in one invocation so the numbers share one machine state:
//
//   - manifest GET by digest (cold and warm) and HEAD by tag: latency
//     percentiles and throughput at several client concurrencies; the warm
//     GET against the floor (a bare net/http server answering the same bytes
//     from memory) and HEAD by tag against a bare reverse proxy, both run as
//     processes of their own (this binary re-executed as serve-floor and
//     serve-relay) so that their CPU is read like Portcullis's;
//   - blob streaming throughput (first pulls through Portcullis) with a
//     discarding and a digest-checking client, against one core's SHA-256
//     measured in the same run, with the CPU per GiB of every process in
//     the chain; and the resident memory Portcullis needs to stream a 1 GiB
//     blob;
//   - a thundering herd on one unverified digest, with the upstream requests
//     counted by a spy reverse proxy, to show one verification and one fetch
//     of each piece of evidence;
//   - blobherd: a hundred clients pulling one large blob at once through a
//     cold Portcullis, without the blob cache and with it, the upstream
//     throttled to stand for a remote registry: upstream fetches of the
//     blob, the last client's time against one pull alone, RSS growth, the
//     CPU Portcullis and the clients (this process) spent, and the same herd
//     again from the warm cache, which nothing holds back;
//   - lineage: the first and the cached pull of a model whose depth-3
//     provenance chain (model, base model, dataset, corpus) must verify,
//     and the engine's CPU for one whole walk;
//   - in-process verification CPU per subject and the heap cost of a full
//     verdict cache;
//   - shared state: replicas on one real redis-server, a verdict read from
//     Redis against one read from memory, and herds on one replica and on
//     three (skipped when redis-server is not installed);
//   - attacks on fresh Portcullis processes (package hostile): evidence and
//     predicate bombs (RSS growth and time to the deny, one pull and three
//     at once), a flood of abandoned requests through a tarpit upstream
//     (goroutines, descriptors and held upstream requests afterwards) and
//     hundreds of clients that never read an allowed blob (RSS per stalled
//     stream).
//
// The program trusts nothing it measures: every response status and length
// is checked, and a failed request is reported, never timed as a success.
// It starts subprocesses (docker-registry, portcullis) and a temporary
// directory; all of them are removed on exit, on error, on panic and on
// SIGINT/SIGTERM, and subprocesses are also bound to this process's
// lifetime with a parent-death signal.
//
// Usage:
//
//	go run ./test/bench [-quick] [-out FILE] [-portcullis PATH] [-only PHASES] [-rss-limit MiB]
//		[-blob-runs N] [-baseline PATH] [-blob-tls]
package main
