package main

import (
	"net/http"

	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// teardown is the process-wide cleanup: there is exactly one set of
// subprocesses and one temp dir to remove, whichever way the soak ends.
var teardown = &harness.Cleanup{}

// newClient is keep-alive with room for every load client, never through
// an environment proxy.
func newClient() *http.Client {
	return &http.Client{Transport: harness.NewTransport(512)}
}
