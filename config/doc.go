// Package config reads and validates the Portcullis configuration file.
//
// The file is untrusted input until it has been checked: it is read through
// a size limit, decoded as exactly one YAML document, and every key is
// checked against the schema, so an unknown, misspelt or duplicated key is
// an error naming its path rather than a setting silently ignored. Defaults
// are then applied and the whole configuration is validated; every problem
// is reported at once, each with the file, line and key path it concerns.
//
// Validation enforces the secure defaults the proxy relies on: a boundary
// without authorities, trust material of an unknown kind or an upstream
// reached over plain HTTP without insecure: true does not load. The
// settings that do weaken verification are listed by Warnings so that the
// command can log them at start.
//
// The package only describes: it does not open key files, read environment
// variables or compile CEL conditions. CheckFiles confirms that referenced
// files exist, and the command translates a Config into the option types
// of the proxy and verify packages, which never see YAML types.
package config
