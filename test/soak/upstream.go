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

	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// upstream is the registry behind Portcullis: a separate process on a
// fixed port with its content on disk, so it can be killed and started
// again and come back with the same content.
type upstream struct {
	kind   string // "distribution 2.8 (docker-registry)" or "built-in registry"
	dir    string
	port   int
	argv   []string
	p      *harness.Proc
	starts int
}

func (u *upstream) host() string { return "127.0.0.1:" + strconv.Itoa(u.port) }
func (u *upstream) url() string  { return "http://" + u.host() }

// newUpstream prepares docker-registry when it is installed (mode "auto"
// or "distribution") or this program in registry mode ("builtin").
func newUpstream(dir, mode string) (*upstream, error) {
	port, err := harness.FreePort()
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
		if err := os.WriteFile(cfg, []byte(harness.DistributionConfig(storage, port, "")), 0o600); err != nil {
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

// start runs the upstream, again under the same log after a crash, and
// waits until its own listener answers.
func (u *upstream) start(ctx context.Context, client *http.Client) error {
	var p *harness.Proc
	var err error
	if u.p == nil {
		p, err = harness.Start(teardown, u.dir, "upstream", u.argv...)
	} else {
		p, err = u.p.Restart()
	}
	if err != nil {
		return err
	}
	u.p = p
	u.starts++
	return p.WaitReady(ctx, client, u.url()+"/v2/", u.port)
}

// crash kills the upstream with SIGKILL.
func (u *upstream) crash() { u.p.Kill() }

// restart starts the upstream again, retrying while the port is still
// being released.
func (u *upstream) restart(ctx context.Context, client *http.Client) error {
	var err error
	for range 5 {
		if err = u.start(ctx, client); err == nil {
			return nil
		}
		u.p.Kill()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return err
}
