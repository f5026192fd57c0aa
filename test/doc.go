// Package test holds cross-package checks (dependency directions), the
// signing fixtures (test/fixtures), a helper that takes a test's Redis
// down without freeing its address to other tests (test/redistest), the
// benchmark program (test/bench) and the real-tool end-to-end suite
// (test/e2e).
package test
