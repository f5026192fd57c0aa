package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// upstream is the registry behind Portcullis: a separate process on a
// fixed port with its content on disk, so it can be killed and started
// again and come back with the same content.
type upstream struct {
	kind   string // "distribution 2.8 (docker-registry)" or "built-in registry"
	dir    string
	port   int
	argv   []string
	p      *proc
	starts int
}

func (u *upstream) host() string { return "127.0.0.1:" + strconv.Itoa(u.port) }
func (u *upstream) url() string  { return "http://" + u.host() }

// newUpstream prepares docker-registry when it is installed (mode "auto"
// or "distribution") or this program in registry mode ("builtin").
func newUpstream(dir, mode string) (*upstream, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	u := &upstream{dir: dir, port: port}
	storage := filepath.Join(dir, "upstream-storage")
	if err := os.MkdirAll(storage, 0o700); err != nil {
		return nil, err
	}
	bin, lookErr := exec.LookPath("docker-registry")
	switch {
	case mode == "distribution" && lookErr != nil:
		return nil, fmt.Errorf("docker-registry not found: %w", lookErr)
	case mode == "distribution" || (mode == "auto" && lookErr == nil):
		cfg := filepath.Join(dir, "upstream.yml")
		err := os.WriteFile(cfg, fmt.Appendf(nil, `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  cache:
    blobdescriptor: inmemory
http:
  addr: "127.0.0.1:%d"
`, storage, port), 0o600)
		if err != nil {
			return nil, err
		}
		u.kind, u.argv = "distribution 2.8 (docker-registry)", []string{bin, "serve", cfg}
	case mode == "builtin" || mode == "auto":
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		u.kind, u.argv = "built-in registry (go-containerregistry, disk blobs, manifest journal)",
			[]string{exe, "-registry-dir", storage, "-registry-addr", u.host()}
	default:
		return nil, fmt.Errorf("unknown -upstream %q (auto, distribution, builtin)", mode)
	}
	return u, nil
}

// start runs the upstream and waits until its own listener answers.
func (u *upstream) start(ctx context.Context, client *http.Client) error {
	p, err := startProc(u.dir, "upstream", u.argv...)
	if err != nil {
		return err
	}
	u.p = p
	u.starts++
	return p.waitReady(ctx, client, u.url()+"/v2/", http.StatusOK, u.port)
}

// crash kills the upstream with SIGKILL.
func (u *upstream) crash() { u.p.kill() }

// restart starts the upstream again, retrying while the port is still
// being released.
func (u *upstream) restart(ctx context.Context, client *http.Client) error {
	var err error
	for range 5 {
		if err = u.start(ctx, client); err == nil {
			return nil
		}
		u.p.kill()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return err
}
