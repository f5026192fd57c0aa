package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// dockerRegistryBin is Debian's packaging of distribution 2.8.
const dockerRegistryBin = "docker-registry"

// target is one registry endpoint under test.
type target struct {
	name string
	host string        // 127.0.0.1:port
	proc *harness.Proc // nil when served in-process
}

func (t *target) url() string { return "http://" + t.host }

// measure runs f and adds the target process's CPU per request to the
// cell. CPU is less sensitive than latency to other load on a shared
// machine, so it is the number to compare across runs.
func (t *target) measure(f func() cell) cell {
	if t.proc == nil {
		return f()
	}
	before, err := procCPU(t.proc.Pid())
	c := f()
	after, err2 := procCPU(t.proc.Pid())
	if err == nil && err2 == nil && c.requests > 0 {
		c.cpu = (after - before) / time.Duration(c.requests)
	}
	return c
}

// startDistribution runs docker-registry on a fresh filesystem store;
// remote, when set, puts it in pull-through proxy mode.
func startDistribution(ctx context.Context, client *http.Client, bin, dir, name, remote string) (*target, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, name+"-storage")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, name+".yml")
	if err := os.WriteFile(cfg, []byte(harness.DistributionConfig(root, port, remote)), 0o600); err != nil {
		return nil, err
	}
	p, err := harness.Start(teardown, dir, name, bin, "serve", cfg)
	if err != nil {
		return nil, err
	}
	t := &target{name: name, host: fmt.Sprintf("127.0.0.1:%d", port), proc: p}
	if err := p.WaitReady(ctx, client, t.url()+"/v2/", port); err != nil {
		return nil, err
	}
	return t, nil
}

// startInProcessRegistry is the fallback direct upstream when
// docker-registry is not installed: go-containerregistry's registry with
// blobs on disk, so a 1 GiB layer is not held in memory.
func startInProcessRegistry(dir string) (*target, error) {
	blobs := filepath.Join(dir, "direct-blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	quiet := log.New(io.Discard, "", 0)
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(quiet), registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs))),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          quiet,
	}
	go func() {
		defer teardown.Guard()
		_ = srv.Serve(ln)
	}()
	teardown.Add(func() { _ = srv.Close() })
	return &target{name: "direct", host: ln.Addr().String()}, nil
}

// portcullis is a running proxy subprocess.
type portcullis struct {
	target
	admin string // 127.0.0.1:port
}

// startPortcullis runs the binary with the default bench config (see
// defaultConfig) and waits until it is ready.
func startPortcullis(ctx context.Context, client *http.Client, bin, dir, name, upstream string, pubPEM []byte) (*portcullis, error) {
	return startPortcullisWith(ctx, client, bin, dir, name, pubPEM, defaultConfig(upstream))
}

// defaultConfig has one insecure (loopback) upstream (named so that no
// repository path starts with it, which would make it an alias prefix), a
// single key as trust and one boundary over every repository that requires
// it. The verdict and manifest caches keep their production defaults.
func defaultConfig(upstream string) harness.Config {
	return benchConfig(upstream, nil)
}

// benchConfig is defaultConfig with optional upstream aliases and
// boundaries placed before the catch-all.
func benchConfig(upstream string, aliases []string, boundaries ...harness.Boundary) harness.Config {
	return harness.Config{
		Upstreams:  []harness.Upstream{{Name: "origin", URL: upstream, Aliases: aliases}},
		Key:        "bench",
		Boundaries: boundaries,
	}
}

// startPortcullisWith runs the binary with cfg, writing the key and config
// under dir/name, and waits until it is ready on listeners of its own.
func startPortcullisWith(ctx context.Context, client *http.Client, bin, dir, name string, pubPEM []byte, cfg harness.Config) (*portcullis, error) {
	hp, err := harness.StartPortcullis(ctx, teardown, client, bin, dir, name, pubPEM, cfg)
	if err != nil {
		return nil, err
	}
	return &portcullis{target: target{name: name, host: hp.Host, proc: hp.Proc}, admin: hp.Admin}, nil
}
