// Package harness is the process plumbing shared by the programs that
// measure a running Portcullis from outside, the benchmark (test/bench)
// and the soak test (test/soak):
//
//   - one Cleanup per program that undoes everything it started, newest
//     first, on whichever way out comes first: normal exit, error, panic
//     in any goroutine (Guard) or SIGINT/SIGTERM (OnSignal);
//   - subprocesses (Start) with their output in a log file, bound to the
//     harness's lifetime by a parent-death signal, stopped by pid only,
//     and a readiness wait that also checks that the answering listener
//     belongs to the process started for it (OwnsPort): a free port picked
//     by the harness could be taken by another process before the child
//     binds it, and a harness that measured that process would report
//     numbers that are not Portcullis's;
//   - Portcullis itself: built from the enclosing module, configured with
//     one trusted key and loopback upstreams, and started on fresh ports;
//   - the distribution registry's configuration, the HTTP client
//     transport, and the formatting of counts and durations in the
//     reports.
//
// It is test tooling: it speaks plain HTTP on loopback, reads /proc (so
// it needs Linux) and lives under test/internal so that only the test
// programs can import it.
package harness
