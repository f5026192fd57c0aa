// Command portcullis is a pull-through OCI registry proxy that serves only
// signed and attested content.
//
// This package parses flags, loads and validates the configuration, wires
// the proxy, verification engine and caches together, and runs the
// subcommands: serve, demo, verify, config check|example, mirror-config.
// It holds no policy logic of its own: a config that does not validate, a
// trust file that does not load or a policy the engine refuses stops the
// command before anything listens (secure defaults; the insecure settings
// that remain are logged at start). The demo seeds an in-process registry
// with test/fixtures and never touches the network beyond loopback.
package main
