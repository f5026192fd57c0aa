package mirrorconfig

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

const usage = `Usage:
  portcullis mirror-config containerd --proxy URL [--out DIR] [--ca FILE] REGISTRY...
  portcullis mirror-config containerd --verifier ADMIN_URL [--verifier-...] [--proxy URL REGISTRY...]
  portcullis mirror-config crio --proxy URL [--out FILE] REGISTRY[=ALIAS]...

Generates client configuration that sends every pull from the given
registries through the Portcullis proxy with no fallback to the real
registry, so that a denial by the proxy is final.

  containerd  one hosts.toml per registry, for containerd's registry
              config_path (or ctr --hosts-dir). With --out, the files are
              written to DIR/<registry>/hosts.toml; otherwise each is printed
              after a "# <path>" line.
  crio        a registries.conf drop-in for CRI-O and podman, for
              /etc/containers/registries.conf.d/. Printed, or written to
              --out FILE. The location path prefix is the registry name,
              or ALIAS (one of the proxy's upstream aliases) when given; a
              registry with a port needs an ALIAS, since a colon cannot
              appear in a location path.

Flags:
  --proxy URL  the proxy, as http(s)://host[:port] (required)
  --out PATH   directory (containerd) or file (crio) to write instead of
               printing
  --ca FILE    containerd only: path on the node of the CA certificate that
               signed an https proxy's certificate

containerd 2.x image verifier (printed, also with --out; --proxy and
registries are then optional):
  --verifier ADMIN_URL       the proxy's admin listener as nodes reach it; prints
                             the config.toml fragment for the image verifier
                             plugin, the wrapper script for its bin_dir and the
                             settings of "portcullis node-verifier"
  --verifier-token-file FILE admin token on the node (default
                             /etc/portcullis/node-verifier.token; "-" for none)
  --verifier-ca FILE         CA of an https admin listener, on the node
  --verifier-timeout DUR     containerd's per_verifier_timeout (default 10s)
  --verifier-bin-dir DIR     containerd's bin_dir (default
                             /opt/containerd/image-verifier/bin)
  --portcullis-bin FILE      portcullis on the node (default /usr/local/bin/portcullis)
  --verifier-config FILE     the verifier's settings file on the node (default
                             /etc/portcullis/node-verifier.yaml)

Example:
  portcullis mirror-config containerd --proxy https://portcullis.internal:5000 \
      --out /etc/containerd/certs.d docker.io ghcr.io
`

// Run implements "portcullis mirror-config"; args follow the subcommand
// name. Generated configuration goes to stdout or --out, usage to stderr
// (stdout for -h).
func Run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing runtime: containerd or crio")
	}
	runtime := args[0]
	switch runtime {
	case "containerd", "crio":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown runtime %q: want containerd or crio", runtime)
	}

	fs := flag.NewFlagSet("mirror-config "+runtime, flag.ContinueOnError)
	// Errors are returned to the caller, which reports them once; the flag
	// package's own printing would duplicate them.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	proxyURL := fs.String("proxy", "", "")
	out := fs.String("out", "", "")
	ca := fs.String("ca", "", "")
	var vo VerifierOptions
	fs.StringVar(&vo.AdminURL, "verifier", "", "")
	fs.StringVar(&vo.TokenFile, "verifier-token-file", "", "")
	fs.StringVar(&vo.CAFile, "verifier-ca", "", "")
	fs.DurationVar(&vo.Timeout, "verifier-timeout", 0, "")
	fs.StringVar(&vo.BinDir, "verifier-bin-dir", "", "")
	fs.StringVar(&vo.Binary, "portcullis-bin", "", "")
	fs.StringVar(&vo.ConfigPath, "verifier-config", "", "")
	registries, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if err != nil {
		fmt.Fprint(stderr, usage)
		return err
	}
	verifierOnly := runtime == "containerd" && vo.AdminURL != "" && *proxyURL == "" && len(registries) == 0
	if *proxyURL == "" && !verifierOnly {
		return errors.New("--proxy is required")
	}

	switch runtime {
	case "containerd":
		var verifier map[string][]byte
		if vo.AdminURL != "" {
			if verifier, err = ContainerdVerifier(vo); err != nil {
				return err
			}
		}
		if !verifierOnly {
			files, err := ContainerdWith(*proxyURL, registries, ContainerdOptions{CA: *ca})
			if err != nil {
				return err
			}
			if err := emitContainerd(files, *out, stdout); err != nil {
				return err
			}
			if verifier != nil && *out == "" {
				fmt.Fprintln(stdout)
			}
		}
		if verifier == nil {
			return nil
		}
		// These belong outside the hosts directory: they are printed.
		return emitContainerd(verifier, "", stdout)
	default:
		if vo.AdminURL != "" {
			return errors.New("--verifier applies to containerd only")
		}
		if *ca != "" {
			return errors.New("--ca applies to containerd only; CRI-O reads CA certificates from /etc/containers/certs.d")
		}
		conf, err := CRIO(*proxyURL, registries)
		if err != nil {
			return err
		}
		if *out == "" {
			_, err := stdout.Write(conf)
			return err
		}
		return writeFileAtomic(*out, conf)
	}
}

// parseInterspersed parses flags that may appear before, between or after
// the positional arguments, as in "crio docker.io --proxy URL ghcr.io",
// and returns the positional ones. Everything after "--" is positional.
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

func emitContainerd(files map[string][]byte, dir string, stdout io.Writer) error {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	if dir == "" {
		for i, p := range paths {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			if _, err := fmt.Fprintf(stdout, "# %s\n%s", p, files[p]); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		name := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return fmt.Errorf("failed to create %s: %w", filepath.Dir(name), err)
		}
		if err := writeFileAtomic(name, files[p]); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic replaces name with data so that a runtime reading the
// file concurrently sees either the old or the new configuration, never a
// truncated one.
func writeFileAtomic(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("failed to write %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to write %s: %w", name, err)
	}
	return nil
}
