package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of a trusted root kept through TUF.
const (
	// DefaultTUFRefresh is how often the TUF repository is asked for
	// new metadata. The public sigstore timestamp role is re-signed
	// daily and expires after a few days, so a daily refresh keeps a
	// margin of several failed attempts before the root goes stale.
	DefaultTUFRefresh = 24 * time.Hour
	// DefaultTUFTimeout bounds one metadata or target download.
	DefaultTUFTimeout = 30 * time.Second
	// MinTUFRefresh keeps a misconfigured refresh from hammering the
	// repository.
	MinTUFRefresh = time.Minute
)

// TUF is a sigstore trusted root fetched and kept fresh through a TUF
// repository, starting from a pinned root.json.
type TUF struct {
	// URL is the TUF repository's base URL (metadata at URL/<role>.json,
	// targets under URL/targets/). Required.
	URL string `yaml:"url"`
	// Root is the pinned TUF root.json the chain of trust starts from,
	// relative to the configuration file. Required.
	Root string `yaml:"root"`
	// CacheDir keeps the verified metadata and target so that a restart
	// works without the network. Default: the user cache directory
	// ($XDG_CACHE_HOME or ~/.cache)/portcullis/tuf/<trust name>.
	CacheDir string `yaml:"cache_dir"`
	// Refresh is how often new metadata is fetched; default 24h.
	Refresh Duration `yaml:"refresh"`
	// Timeout bounds each download; default 30s.
	Timeout Duration `yaml:"timeout"`
}

// TrustedRootSource is the trusted_root key as written: a file name or a
// mapping {tuf: {...}}. Validation copies it into Trust.TrustedRoot or
// Trust.TUF, which the rest of the program reads.
type TrustedRootSource struct {
	File string
	TUF  *TUF
}

// UnmarshalYAML accepts a string (a trusted_root.json file) or a mapping
// with the single key tuf, decoded strictly.
func (s *TrustedRootSource) UnmarshalYAML(n *yaml.Node) error {
	switch {
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str":
		*s = TrustedRootSource{File: n.Value}
		return nil
	case n.Kind == yaml.MappingNode:
	default:
		return errors.New("must be a file name or a mapping {tuf: {url, root, cache_dir, refresh}}")
	}
	var t *TUF
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value != "tuf" {
			return fmt.Errorf("line %d: unknown key %q (the only key is tuf)", k.Line, k.Value)
		}
		if t != nil {
			return fmt.Errorf("line %d: duplicate key tuf", k.Line)
		}
		if v.Kind != yaml.MappingNode {
			return fmt.Errorf("line %d: tuf must be a mapping", v.Line)
		}
		seen := map[string]bool{}
		for j := 0; j+1 < len(v.Content); j += 2 {
			if key := v.Content[j].Value; seen[key] {
				return fmt.Errorf("line %d: duplicate key tuf.%s", v.Content[j].Line, key)
			} else {
				seen[key] = true
			}
		}
		// Re-encode and decode with KnownFields: yaml.Node.Decode has
		// no strict mode, and an unknown key must not pass silently.
		raw, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		t = &TUF{}
		if err := dec.Decode(t); err != nil {
			return fmt.Errorf("tuf (line %d): %s", v.Line, cleanTUFError(err))
		}
	}
	if t == nil {
		return errors.New("a trusted_root mapping needs the key tuf")
	}
	*s = TrustedRootSource{TUF: t}
	return nil
}

// cleanTUFError drops yaml's line numbers, which count from the
// re-encoded mapping rather than the file.
func cleanTUFError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var out []string
		for _, m := range te.Errors {
			if sm := yamlLineRE.FindStringSubmatch(strings.TrimSpace(m)); sm != nil {
				m = sm[2]
			}
			out = append(out, m)
		}
		return strings.Join(out, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// MarshalYAML writes the form UnmarshalYAML reads.
func (s TrustedRootSource) MarshalYAML() (any, error) {
	if s.TUF != nil {
		return map[string]*TUF{"tuf": s.TUF}, nil
	}
	return s.File, nil
}

// IsZero lets omitempty leave an unset source out.
func (s TrustedRootSource) IsZero() bool { return s.File == "" && s.TUF == nil }

// resolveRootSource copies what trusted_root said into the fields the
// program reads. A source set in Go (TrustedRoot or TUF directly) is
// kept as it is.
func (t *Trust) resolveRootSource() {
	if t.RootSource.IsZero() {
		return
	}
	t.TrustedRoot, t.TUF = t.RootSource.File, t.RootSource.TUF
	if t.TUF != nil {
		if t.TUF.Refresh == 0 {
			t.TUF.Refresh = Duration(DefaultTUFRefresh)
		}
		if t.TUF.Timeout == 0 {
			t.TUF.Timeout = Duration(DefaultTUFTimeout)
		}
	}
}

// HasTrustedRoot says whether the entry holds sigstore trusted material,
// from a file or through TUF.
func (t *Trust) HasTrustedRoot() bool { return t.TrustedRoot != "" || t.TUF != nil }

// validateTUF checks a trusted_root.tuf mapping.
func validateTUF(r *reporter, p string, t *TUF) {
	p = joinPath(p, "trusted_root.tuf")
	if t.URL == "" {
		r.addf(joinPath(p, "url"), "is required (the public sigstore instance is https://tuf-repo-cdn.sigstore.dev)")
	} else if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		r.addf(joinPath(p, "url"), "must be an http or https URL, not %q", t.URL)
	} else if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		r.addf(joinPath(p, "url"), "must not carry a query, fragment or credentials")
	}
	if strings.TrimSpace(t.Root) == "" {
		r.addf(joinPath(p, "root"), "is required: the pinned root.json the chain of trust starts from")
	}
	if t.Refresh != 0 && t.Refresh.D() < MinTUFRefresh {
		r.addf(joinPath(p, "refresh"), "must be at least %s", MinTUFRefresh)
	}
	if t.Timeout < 0 {
		r.addf(joinPath(p, "timeout"), "must not be negative")
	}
}

// TUFCacheDir is where the trust entry named name keeps its TUF
// metadata: cache_dir resolved against the configuration file, or the
// default under the user cache directory.
func (c *Config) TUFCacheDir(name string, t *TUF) string {
	if t.CacheDir != "" {
		return c.Resolve(t.CacheDir)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "portcullis", "tuf", name)
}
