// Package tufrepo is a TUF repository for tests: built with go-tuf's
// metadata API, served by httptest, publishing a sigstore
// trusted_root.json target. It signs with ed25519 keys made per
// repository; nothing it serves is meant to be trusted outside tests.
package tufrepo
