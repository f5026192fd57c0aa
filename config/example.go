package config

import _ "embed"

// Example is a complete, commented configuration. It passes Parse; the
// files it names are created by `portcullis config example
// --write-example-files DIR`, and CheckFiles fails on it until they exist.
//
//go:embed example.yaml
var Example []byte
