package config

import (
	"errors"
	"fmt"
	"io"
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
	c.eachFile(func(path, p string) {
		if err := readable(c.Resolve(p)); err != nil {
			r.addf(path, "%v", err)
		}
	})
	return r.err()
}

// WatchedFiles lists, resolved, the configuration file and every file it
// names (those CheckFiles checks): a running proxy reloads when one of
// them changes.
func (c *Config) WatchedFiles() []string {
	var out []string
	if c.Path != "" {
		out = append(out, c.Path)
	}
	c.eachFile(func(_, p string) { out = append(out, c.Resolve(p)) })
	return out
}

// WatchedDirs lists, resolved, the directories whose every file the
// configuration reads (boundaries_dir): a running proxy reloads when
// anything in them changes.
func (c *Config) WatchedDirs() []string {
	if c.BoundariesDir == "" {
		return nil
	}
	return []string{c.Resolve(c.BoundariesDir)}
}

// eachFile calls visit with the key path and the value, as written, of
// every non-empty file setting.
func (c *Config) eachFile(visit func(path, p string)) {
	check := func(path, p string) {
		if p != "" {
			visit(path, p)
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
	c.checkClientFiles(check)
	if c.Summaries != nil {
		check("summaries.key", c.Summaries.Key)
	}
	if c.Shared.Redis != nil {
		check("shared.redis.ca_file", c.Shared.Redis.CAFile)
	}
	for i, t := range c.Trust {
		p := indexPath("trust", i)
		for j, k := range t.Keys {
			check(indexPath(joinPath(p, "keys"), j), k)
		}
		check(joinPath(p, "trusted_root"), t.TrustedRoot)
		if t.TUF != nil {
			check(joinPath(p, "trusted_root.tuf.root"), t.TUF.Root)
		}
		if n := t.Notation; n != nil {
			for _, st := range []struct {
				name  string
				files []string
			}{{"ca", n.CA}, {"signing_authority", n.SigningAuthority}, {"tsa", n.TSA}} {
				for j, f := range st.files {
					check(indexPath(joinPath(p, "notation."+st.name), j), f)
				}
			}
		}
	}
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

var errTooLarge = errors.New("file too large")

// ReadLimited reads the regular file at path, refusing one larger than
// limit bytes without reading more than limit+1: every file the process
// reads on its own (trust material, revocation lists, cached metadata) is
// bounded, whatever is put there.
func ReadLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", path, limit, errTooLarge)
	}
	return b, nil
}
