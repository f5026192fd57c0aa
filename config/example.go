package config

import _ "embed"

// Example is a complete, commented configuration. It passes Parse; the key
// and trusted root files it names are placeholders, so CheckFiles fails on
// it until they exist.
//
//go:embed example.yaml
var Example []byte
