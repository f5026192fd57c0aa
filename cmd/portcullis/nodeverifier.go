package main

import (
	"io"
	"os"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/nodeverifier"
)

// node-verifier is deliberately not in commandHelp: main answers --help there
// with exit 0, which containerd would take as an accepted pull.

// runNodeVerifier is "portcullis node-verifier", run by containerd's image
// verifier plugin with the image's descriptor on stdin.
func runNodeVerifier(args []string, stdout, stderr io.Writer) int {
	return nodeverifier.Main(args, os.Getenv, os.Stdin, stdout, stderr)
}
