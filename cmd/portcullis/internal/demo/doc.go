// Package demo runs the offline demonstration behind `portcullis demo`: an
// in-process registry seeded with signed, unsigned, tampered and lineage
// content (built with test/fixtures: ephemeral keys, an in-memory sigstore),
// a proxy in front of it, and a table of the verdicts each pull got.
//
// It is test scaffolding and lives apart from the serving path: only the
// demo subcommand imports it, so nothing `serve` runs can reach the
// fixtures' signers or their throwaway trust material. Everything it starts
// listens on loopback and ends with the command.
package demo
