package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
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
	listen := fs.String("listen", defaultDemoListen, "address for the demo proxy")
	once := fs.Bool("once", false, "print the verdict table and exit instead of serving until interrupted")
	verbose := fs.Bool("v", false, "print the proxy's access and audit log")
	if rest, err := parseInterspersed(fs, args); err != nil || len(rest) != 0 {
		fmt.Fprint(stderr, commandHelp["demo"])
		return 2
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "listen" })
	addr, moved := demoListen(*listen, explicit)
	if moved {
		fmt.Fprintf(stdout, "%s is in use (a local registry, or macOS AirPlay Receiver on port 5000); using a free port instead\n", *listen)
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
	if err := demo.Run(ctx, demo.Options{Listen: addr, Once: *once, Logger: logger, Stdout: stdout}); err != nil {
		fmt.Fprintln(stderr, "portcullis demo:", err)
		return 1
	}
	return 0
}

// defaultDemoListen is where the demo listens unless told otherwise.
const defaultDemoListen = "127.0.0.1:5000"

// demoListen returns the address the demo should listen on: addr itself
// when the user chose it or it is free, else the same host with a port the
// kernel picks (the demo prints the address it got). The probe and the
// demo's own listen are not atomic; if another process takes the port in
// between, the demo fails with a message naming --listen.
func demoListen(addr string, explicit bool) (string, bool) {
	if explicit {
		return addr, false
	}
	l, err := net.Listen("tcp", addr)
	if err == nil {
		l.Close()
		return addr, false
	}
	host, _, splitErr := net.SplitHostPort(addr)
	if splitErr != nil {
		return addr, false
	}
	return net.JoinHostPort(host, "0"), true
}
