package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Resolve returns p as a path the process can open: "~/" is expanded to
// the user's home directory, and a relative path is taken relative to the
// directory of the configuration file (the working directory when the
// configuration was not read from a file). "" stays "".
func (c *Config) Resolve(p string) string {
	if p == "" {
		return ""
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if filepath.IsAbs(p) || c.Path == "" {
		return filepath.Clean(p)
	}
	return filepath.Join(filepath.Dir(c.Path), p)
}

// CheckFiles verifies that every file the configuration names (upstream CA
// bundles and docker configs, the TLS pair, trust keys and trusted roots)
// exists, is a regular file and can be opened. It reports all missing files
// at once as a *ValidationError. Contents are checked by the code that
// loads them.
func (c *Config) CheckFiles() error {
	r := &reporter{file: c.Path, lines: c.lines}
	check := func(path, p string) {
		if p == "" {
			return
		}
		if err := readable(c.Resolve(p)); err != nil {
			r.addf(path, "%v", err)
		}
	}
	if c.TLS != nil {
		check("tls.cert", c.TLS.Cert)
		check("tls.key", c.TLS.Key)
	}
	for i, u := range c.Upstreams {
		p := indexPath("upstreams", i)
		check(joinPath(p, "ca_file"), u.CAFile)
		if u.Auth != nil {
			check(joinPath(p, "auth.docker_config"), u.Auth.DockerConfig)
		}
	}
	if c.Summaries != nil {
		check("summaries.key", c.Summaries.Key)
	}
	for i, t := range c.Trust {
		p := indexPath("trust", i)
		for j, k := range t.Keys {
			check(indexPath(joinPath(p, "keys"), j), k)
		}
		check(joinPath(p, "trusted_root"), t.TrustedRoot)
	}
	return r.err()
}

func readable(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}
