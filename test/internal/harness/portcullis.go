package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildPortcullis compiles ./cmd/portcullis of the enclosing module into
// dir/bin.
func BuildPortcullis(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("failed to run go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the portcullis module; pass -portcullis PATH")
	}
	bin := filepath.Join(dir, "bin", "portcullis")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/portcullis")
	cmd.Dir = filepath.Dir(gomod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("failed to build ./cmd/portcullis: %w\n%s", err, b)
	}
	return bin, nil
}

// Portcullis is a running proxy subprocess.
type Portcullis struct {
	*Proc
	Host  string // registry listener, 127.0.0.1:port
	Admin string // admin listener, 127.0.0.1:port
}

// MetricsURL is the admin /metrics endpoint.
func (pc *Portcullis) MetricsURL() string { return "http://" + pc.Admin + "/metrics" }

// StartPortcullis writes pub as cosign.pub and cfg, on two fresh loopback
// ports, as portcullis.yaml under dir/name, runs `bin serve` with it
// (output in dir/name.log) and waits until /readyz answers from the
// process's own admin listener and it also holds the registry one.
func StartPortcullis(ctx context.Context, c *Cleanup, client *http.Client, bin, dir, name string, pub []byte, cfg Config) (*Portcullis, error) {
	cfgDir := filepath.Join(dir, name)
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "cosign.pub"), pub, 0o600); err != nil {
		return nil, err
	}
	var err error
	if cfg.Port, err = FreePort(); err != nil {
		return nil, err
	}
	if cfg.AdminPort, err = FreePort(); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(cfgDir, "portcullis.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.YAML()), 0o600); err != nil {
		return nil, err
	}
	p, err := Start(c, dir, name, bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	pc := &Portcullis{
		Proc:  p,
		Host:  fmt.Sprintf("127.0.0.1:%d", cfg.Port),
		Admin: fmt.Sprintf("127.0.0.1:%d", cfg.AdminPort),
	}
	if err := p.WaitReady(ctx, client, "http://"+pc.Admin+"/readyz", cfg.AdminPort, cfg.Port); err != nil {
		p.Stop()
		return nil, err
	}
	return pc, nil
}
