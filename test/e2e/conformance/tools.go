//go:build tools

// Package conformance pins the OCI distribution-spec conformance suite;
// install.sh builds its command from here and conformance.sh runs it
// against an upstream registry and against Portcullis in front of it.
package conformance

import _ "github.com/opencontainers/distribution-spec/conformance"
