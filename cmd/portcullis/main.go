package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/mirrorconfig"
)

const usage = `portcullis: a pull-through OCI registry proxy that lets only signed, attested content through

Usage:
  portcullis serve --config FILE             run the proxy
  portcullis demo [--listen ADDR] [--once]   offline demo: signed, unsigned and tampered content through the proxy
  portcullis verify REF --config FILE        explain one verdict (exit 0 allowed, 1 denied, 2 could not decide)
  portcullis config check FILE               validate a config file and the files it references
  portcullis config example [--write-example-files DIR]
                                             print an example config, or write it with the files it names
  portcullis mirror-config containerd|crio --proxy URL REGISTRY...
                                             client configuration that makes the proxy final (no fallback)
  portcullis node-verifier -name REF -digest DIGEST ...
                                             containerd image verifier: asks the proxy for the digest's verdict
  portcullis token hash < TOKEN              digest of a client or admin token for a token file
  portcullis token htpasswd USER < PASSWORD  bcrypt htpasswd line for clients.htpasswd
  portcullis version                         version, commit and Go version

"portcullis COMMAND --help" describes a command, its arguments and its exit
codes. Flags may come before or after the arguments.
`

// Per-command help, printed on stdout for --help. Each names the exit codes,
// which scripts and probes rely on.
var commandHelp = map[string]string{
	"serve": `Usage: portcullis serve --config FILE

Runs the proxy: the registry listener (listen:) and, when admin: is set, the
admin listener with /healthz, /readyz, /metrics and /v1/decisions. The whole
configuration is checked first, as "config check" does; SIGTERM or SIGINT
drains in-flight pulls and stops. SIGHUP, or a change to the configuration
file or a file it names, reloads the configuration: a bad one is refused
and the running one keeps serving.

Flags:
  --config FILE  the configuration file (required); relative paths in it
                 are resolved against its directory

Exit codes:
  0  stopped by SIGTERM or SIGINT
  1  the configuration is invalid, or serving failed
  2  usage error
`,
	"demo": `Usage: portcullis demo [--listen ADDR] [--once] [-v]

Starts an in-process registry seeded with signed, unsigned and tampered
content, puts the proxy in front of it and prints each reference's verdict
and reason. Needs no network and no configuration. When the default port is
taken (a local registry, macOS AirPlay Receiver) a free port is used and
printed; an explicit --listen is never changed.

Flags:
  --listen ADDR  the demo proxy's address (default 127.0.0.1:5000; port 0
                 picks a free one)
  --once         print the verdict table and exit instead of serving until
                 interrupted
  -v             print the proxy's access and audit log

Exit codes:
  0  the demo ran (and, without --once, was interrupted)
  1  the demo failed, or a verdict was not the expected one
  2  usage error
`,
	"verify": `Usage: portcullis verify REF --config FILE [--json]

Decides one reference exactly as the proxy would and explains the verdict:
the boundary, the signers and attestations that counted, every reason, and
the lineage followed. REF is REGISTRY/REPOSITORY[:TAG|@DIGEST], or a
repository of default_upstream.

Flags:
  --config FILE  the configuration file (required)
  --json         print the verdict as JSON

Exit codes:
  0  allowed
  1  denied (including warn mode: would be served, but is a denial)
  2  could not decide (fail closed), an invalid configuration, or a usage error
`,
	"config": `Usage:
  portcullis config check FILE
  portcullis config example [--write-example-files DIR]

check    validates FILE and everything it depends on, and reports every
         problem in one run, each as file:line: key.path: message: unknown
         or invalid keys, files that cannot be opened, environment
         variables named by *_env keys that are not set, attestation
         conditions (CEL) that do not compile, then keys, trusted roots and
         upstream settings as serve loads them.
example  prints an annotated example configuration. With
         --write-example-files DIR it writes DIR/portcullis.yaml and the
         files it names (keys/cosign.pub, trusted_root.json) instead, so that
         "config check DIR/portcullis.yaml" passes. The key and root are
         generated and their private halves discarded: they trust nothing,
         so replace them with your own. Existing files are not overwritten.

Exit codes:
  0  valid (check), written or printed (example)
  1  invalid configuration, or the files could not be written
  2  usage error
`,
	"version": `Usage: portcullis version

Prints the version, the commit it was built from and the Go version.

Exit codes:
  0  always
`,
}

// Stamped at build time by make build and the Dockerfile:
// -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "dev"
	commit  = ""
)

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
	cmd := args[0]
	if help, ok := commandHelp[cmd]; ok && cmd != "config" && wantsHelp(args[1:]) {
		fmt.Fprint(stdout, help)
		return 0
	}
	switch cmd {
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "demo":
		return runDemo(args[1:], stdout, stderr)
	case "verify":
		return runVerify(args[1:], stdout, stderr)
	case "config":
		return runConfig(args[1:], stdout, stderr)
	case "token":
		return runToken(args[1:], os.Stdin, stdout, stderr)
	case "node-verifier":
		return runNodeVerifier(args[1:], stdout, stderr)
	case "mirror-config":
		if err := mirrorconfig.Run(args[1:], stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "portcullis mirror-config:", err)
			return 2
		}
		return 0
	case "version", "--version":
		if len(args) > 1 {
			fmt.Fprint(stderr, commandHelp["version"])
			return 2
		}
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if help, ok := commandHelp[args[1]]; ok {
				fmt.Fprint(stdout, help)
				return 0
			}
			if args[1] == "mirror-config" {
				return run([]string{"mirror-config", "--help"}, stdout, stderr)
			}
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "portcullis: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

// wantsHelp reports whether a help flag appears among args before "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// versionString names the build. A binary built without -ldflags (go
// install, go run) still reports the commit the Go toolchain recorded.
func versionString() string {
	rev, dirty := commit, false
	if info, ok := debug.ReadBuildInfo(); ok && rev == "" {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	} else if dirty {
		rev += "-dirty"
	}
	return fmt.Sprintf("portcullis %s (commit %s, %s %s/%s)", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments ("verify REF --config FILE") and returns the
// positional ones; everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}
