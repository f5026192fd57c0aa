// Package test holds cross-package checks (dependency directions), the
// signing fixtures (test/fixtures), the benchmark program (test/bench) and
// the real-tool end-to-end suite (test/e2e).
package test
