package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/demo"
	"github.com/portcullis-oci/portcullis/config"
)

// runDemo is the only entry into the demo package: its seeded upstream and
// throwaway signers stay off every path that serve, verify and config run.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:5000", "address for the demo proxy")
	once := fs.Bool("once", false, "print the verdict table and exit instead of serving until interrupted")
	verbose := fs.Bool("v", false, "print the proxy's access and audit log")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := zap.NewNop()
	if *verbose {
		var err error
		if logger, err = newLogger(config.Log{Level: "debug", Format: "console"}, stderr); err != nil {
			fmt.Fprintln(stderr, "portcullis demo:", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := demo.Run(ctx, demo.Options{Listen: *listen, Once: *once, Logger: logger, Stdout: stdout}); err != nil {
		fmt.Fprintln(stderr, "portcullis demo:", err)
		return 1
	}
	return 0
}
