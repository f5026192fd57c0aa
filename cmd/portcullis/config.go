package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/wire"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

func runConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, commandHelp["config"])
		return 2
	}
	if wantsHelp(args) {
		fmt.Fprint(stdout, commandHelp["config"])
		return 0
	}
	switch args[0] {
	case "example":
		fs := flag.NewFlagSet("config example", flag.ContinueOnError)
		fs.SetOutput(stderr)
		dir := fs.String("write-example-files", "", "write the example config and the files it names into `DIR`")
		rest, err := parseInterspersed(fs, args[1:])
		if err != nil || len(rest) != 0 {
			fmt.Fprint(stderr, "usage: portcullis config example [--write-example-files DIR]\n")
			return 2
		}
		if *dir == "" {
			_, _ = stdout.Write(config.Example)
			return 0
		}
		written, err := writeExampleFiles(*dir)
		for _, p := range written {
			fmt.Fprintln(stdout, "wrote", p)
		}
		if err != nil {
			fmt.Fprintln(stderr, "portcullis config example:", err)
			return 1
		}
		return 0
	case "check":
		fs := flag.NewFlagSet("config check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		rest, err := parseInterspersed(fs, args[1:])
		if err != nil || len(rest) != 1 {
			fmt.Fprint(stderr, "usage: portcullis config check FILE\n")
			return 2
		}
		cfg, _, err := loadAll(rest[0])
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintln(stdout, "warning:", w)
		}
		if reportRefusedBoundaries(cfg, stderr) {
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok (%d upstreams, %d trust entries, %d boundaries)\n",
			rest[0], len(cfg.Upstreams), len(cfg.Trust), len(cfg.Boundaries))
		return 0
	default:
		fmt.Fprintf(stderr, "portcullis config: unknown subcommand %q\n\n%s", args[0], commandHelp["config"])
		return 2
	}
}

// loadAll reads and validates a config file, the files it references, the
// environment it names and the policy compiled from it: everything serve
// would refuse to start on. Problems that can be found without loading
// anything (the file itself, then files, environment variables and CEL
// conditions) are all reported together.
func loadAll(path string) (*config.Config, *verify.Engine, error) {
	return loadOver(path, nil)
}

// loadOver is loadAll for a reload: prev, the configuration in effect,
// gives each boundary file that is now refused its last good version.
func loadOver(path string, prev *config.Config) (*config.Config, *verify.Engine, error) {
	cfg, err := config.Load(path)
	if ve := (*config.ValidationError)(nil); errors.As(err, &ve) {
		// The file has problems of its own; report those of what it names
		// with them rather than one round later.
		if data, rerr := readConfigFile(path); rerr == nil {
			if salvaged := config.Salvage(data, path); salvaged != nil {
				ve.Problems = append(ve.Problems, preflight(salvaged, os.LookupEnv)...)
			}
		}
		return nil, nil, ve
	}
	if err != nil {
		return nil, nil, err
	}
	wire.RefuseUncompilableBoundaryFiles(cfg)
	cfg.KeepLastGood(prev)
	if ps := preflight(cfg, os.LookupEnv); len(ps) > 0 {
		return nil, nil, &config.ValidationError{Problems: ps}
	}
	if _, err := wire.Upstreams(cfg); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := withClientAuth(cfg, nil, nil); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	pol, err := wire.Policy(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	eng, err := verify.New(pol, wire.EngineOptions(cfg)...)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: policy: %w", path, err)
	}
	return cfg, eng, nil
}

// readConfigFile reads a configuration file with the size limit Load
// applies.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, config.MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > config.MaxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, config.MaxFileSize)
	}
	return data, nil
}
