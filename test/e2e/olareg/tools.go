//go:build tools

// Package olareg pins the olareg registry (an OCI registry with the referrers
// API) for the end-to-end suite; install.sh builds its command from here.
package olareg

import _ "github.com/olareg/olareg/cmd/olareg"
