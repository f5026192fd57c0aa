package main

import (
	"fmt"
	"io"
	"os"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/mirrorconfig"
)

const usage = `portcullis: a pull-through OCI registry proxy that lets only signed, attested content through

Usage:
  portcullis serve --config FILE             run the proxy
  portcullis demo                            offline demo: signed, unsigned and tampered content through the proxy
  portcullis verify --config FILE REF        explain one verdict (exit 0 allowed, 1 denied, 2 could not decide)
  portcullis config check FILE               validate a config file and the files it references
  portcullis config example                  print an example config
  portcullis mirror-config containerd|crio --proxy URL REGISTRY...
                                             client configuration that makes the proxy final (no fallback)
  portcullis version
`

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code, so tests
// can drive the command without exiting.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "demo":
		return runDemo(args[1:], stdout, stderr)
	case "verify":
		return runVerify(args[1:], stdout, stderr)
	case "config":
		return runConfig(args[1:], stdout, stderr)
	case "mirror-config":
		if err := mirrorconfig.Run(args[1:], stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "portcullis mirror-config:", err)
			return 2
		}
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, "portcullis", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "portcullis: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
