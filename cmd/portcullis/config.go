package main

import (
	"fmt"
	"io"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/wire"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

func runConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: portcullis config check FILE | portcullis config example\n")
		return 2
	}
	switch args[0] {
	case "example":
		_, _ = stdout.Write(config.Example)
		return 0
	case "check":
		if len(args) != 2 {
			fmt.Fprint(stderr, "usage: portcullis config check FILE\n")
			return 2
		}
		cfg, _, err := loadAll(args[1])
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintln(stdout, "warning:", w)
		}
		fmt.Fprintf(stdout, "%s: ok (%d upstreams, %d trust entries, %d boundaries)\n",
			args[1], len(cfg.Upstreams), len(cfg.Trust), len(cfg.Boundaries))
		return 0
	default:
		fmt.Fprintf(stderr, "portcullis config: unknown subcommand %q\n", args[0])
		return 2
	}
}

// loadAll reads and validates a config file, the files it references and the
// policy compiled from it: everything serve would refuse to start on.
func loadAll(path string) (*config.Config, *verify.Engine, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.CheckFiles(); err != nil {
		return nil, nil, err
	}
	if _, err := wire.Upstreams(cfg); err != nil {
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
