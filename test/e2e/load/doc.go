// Command load is the end-to-end suite's many-clients tool: it plays a
// herd of clients, or a handful of nodes pulling in a loop, against the
// proxy replicas, and checks every response against the digests the
// registry holds (a response is right only when its bytes hash to the
// digest asked for), so the suite asserts on counts instead of running
// hundreds of crane processes.
//
//	load herd -n 300 -repo REPO -digest DIGEST ADDR...
//
// sends n GETs of the manifest REPO@DIGEST to each ADDR at once and prints
// one line per ADDR and a total: "target ADDR ok=N failed=M max_ms=T
// p50_ms=T", failures named on stderr. It exits 1 if any failed.
//
//	load nodes -front ADDR -nodes 6 -phase-file F -image REPO:TAG@DIGEST... \
//	     [-fresh REPO:TAG@DIGEST...] [-unsigned REPO:TAG] [-unsigned-blob REPO@DIGEST] [-retries N]
//
// runs nodes that each pull every image in turn, as containerd does (HEAD
// the tag, GET the manifest by digest, GET the config and every layer),
// until F says "stop". Each node connects from its own loopback address
// (127.0.0.2, 127.0.0.3, ...), so a front keyed on the client address
// keeps it on one backend. F names the phase the counts are filed under
// (any word); -fresh images join the loop once it says anything other
// than "before". A 503 is retried up to -retries times after its
// Retry-After, on a new connection, as crane retries; what is counted:
// pulls, failed pulls, retries, 503s without Retry-After, 403s of signed
// content, unsigned content served. One line per phase,
// "phase=P key=N ...", in the order the phases were seen.
//
// It trusts nothing it is answered: a manifest or blob counts as served
// right only when its bytes hash to the digest the registry gave for it
// (and a blob has the size its manifest declares); bodies are read
// through limits. It runs only against the suite's own loopback servers.
package main
