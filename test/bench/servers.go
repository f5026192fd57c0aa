package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// dockerRegistryBin is Debian's packaging of distribution 2.8.
const dockerRegistryBin = "docker-registry"

// target is one registry endpoint under test.
type target struct {
	name string
	host string // 127.0.0.1:port
	proc *proc  // nil when served in-process
}

func (t *target) url() string { return "http://" + t.host }

// measure runs f and adds the target process's CPU per request to the
// cell. CPU is less sensitive than latency to other load on a shared
// machine, so it is the number to compare across runs.
func (t *target) measure(f func() cell) cell {
	if t.proc == nil {
		return f()
	}
	before, err := procCPU(t.proc.pid())
	c := f()
	after, err2 := procCPU(t.proc.pid())
	if err == nil && err2 == nil && c.requests > 0 {
		c.cpu = (after - before) / time.Duration(c.requests)
	}
	return c
}

// startDistribution runs docker-registry on a fresh filesystem store;
// remote, when set, puts it in pull-through proxy mode.
func startDistribution(ctx context.Context, client *http.Client, bin, dir, name, remote string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, name+"-storage")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: "127.0.0.1:%d"
`, root, port)
	if remote != "" {
		fmt.Fprintf(&b, "proxy:\n  remoteurl: %q\n", remote)
	}
	cfg := filepath.Join(dir, name+".yml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(dir, name, bin, "serve", cfg)
	if err != nil {
		return nil, err
	}
	t := &target{name: name, host: fmt.Sprintf("127.0.0.1:%d", port), proc: p}
	if err := p.waitHTTP(ctx, client, t.url()+"/v2/", http.StatusOK); err != nil {
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
		defer teardown.guard()
		_ = srv.Serve(ln)
	}()
	teardown.add(func() { _ = srv.Close() })
	return &target{name: "direct", host: ln.Addr().String()}, nil
}

// buildPortcullis compiles ./cmd/portcullis of the enclosing module into
// dir.
func buildPortcullis(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the portcullis module; pass -portcullis PATH")
	}
	bin := filepath.Join(dir, "bin", "portcullis")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/portcullis")
	cmd.Dir = filepath.Dir(gomod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/portcullis: %v\n%s", err, b)
	}
	return bin, nil
}

// portcullis is a running proxy subprocess.
type portcullis struct {
	target
	admin string // 127.0.0.1:port
}

// startPortcullis runs the binary with the default bench config (see
// defaultConfig) and waits until it is ready.
func startPortcullis(ctx context.Context, client *http.Client, bin, dir, name, upstream string, pubPEM []byte) (*portcullis, error) {
	return startPortcullisWith(ctx, client, bin, dir, name, upstream, pubPEM, defaultConfig)
}

// configFunc renders a Portcullis config for the given ports and upstream
// URL; the trusted key is at cosign.pub beside it.
type configFunc func(port, adminPort int, upstream string) string

// defaultConfig has one insecure (loopback) upstream (named so that no
// repository path starts with it, which would make it an alias prefix), a
// single key as trust and one boundary over every repository that requires
// it. The verdict and manifest caches keep their production defaults.
func defaultConfig(port, adminPort int, upstream string) string {
	return benchConfig(port, adminPort, upstream, "", "")
}

// benchConfig is defaultConfig with optional upstream aliases (a YAML flow
// list, e.g. `["a.b"]`) and boundaries placed before the catch-all.
func benchConfig(port, adminPort int, upstream, aliases, boundaries string) string {
	aliasLine := ""
	if aliases != "" {
		aliasLine = "\n    aliases: " + aliases
	}
	return fmt.Sprintf(`listen: "127.0.0.1:%d"
admin: "127.0.0.1:%d"
upstreams:
  - name: origin%s
    url: %q
    insecure: true
default_upstream: origin
trust:
  - name: bench-key
    keys: [cosign.pub]
boundaries:
%s  - name: everything
    match: {upstream: "*", repositories: ["**"]}
    mode: enforce
    signatures:
      threshold: 1
      authorities:
        - {name: bench, key: bench-key}
unmatched: deny
log: {level: warn, format: json}
`, port, adminPort, aliasLine, upstream, boundaries)
}

// startPortcullisWith runs the binary with the config cfg renders, writing
// the key and config under dir/name.
func startPortcullisWith(ctx context.Context, client *http.Client, bin, dir, name, upstream string, pubPEM []byte, cfg configFunc) (*portcullis, error) {
	cfgDir := filepath.Join(dir, name)
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "cosign.pub"), pubPEM, 0o600); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(cfgDir, "portcullis.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg(port, adminPort, upstream)), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(dir, name, bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	pc := &portcullis{
		target: target{name: name, host: fmt.Sprintf("127.0.0.1:%d", port), proc: p},
		admin:  fmt.Sprintf("127.0.0.1:%d", adminPort),
	}
	if err := p.waitHTTP(ctx, client, "http://"+pc.admin+"/readyz", http.StatusOK); err != nil {
		return nil, err
	}
	return pc, nil
}

// metric reads one unlabelled counter or gauge from the admin /metrics.
func (pc *portcullis) metric(ctx context.Context, client *http.Client, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pc.admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			var v float64
			if _, err := fmt.Sscan(f[1], &v); err != nil {
				return 0, fmt.Errorf("metric %s: %w", name, err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("metric %s not exported", name)
}
