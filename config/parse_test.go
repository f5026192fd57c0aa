package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// minimal is the smallest valid configuration.
const minimal = `upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
trust:
  - name: k
    keys: [k.pub]
  - name: root
    trusted_root: root.json
boundaries:
  - name: all
    signatures:
      authorities:
        - {name: a, key: k}
`

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(minimal+`  - name: ci
    signatures:
      authorities:
        - name: gh
          keyless: {trust: root, issuer: "https://issuer", subject: "me"}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, ":5000"},
		{"admin", c.Admin, "127.0.0.1:9090"},
		{"unmatched", c.Unmatched, "deny"},
		{"mode", c.Boundaries[0].Mode, "enforce"},
		{"threshold", c.Boundaries[0].Signatures.Threshold, 1},
		{"verdicts", c.Cache.Verdicts, 100000},
		{"allow_ttl", c.Cache.AllowTTL.D(), 10 * time.Minute},
		{"deny_ttl", c.Cache.DenyTTL.D(), 30 * time.Second},
		{"manifest_mib", c.Cache.ManifestMiB, 64},
		{"tag_ttl", c.Cache.TagTTL.D(), time.Duration(0)},
		{"upstream_timeout", c.UpstreamTimeout.D(), 30 * time.Second},
		{"verify_timeout", c.VerifyTimeout.D(), 60 * time.Second},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "json"},
		{"tlog_threshold", *c.Boundaries[1].Signatures.Authorities[0].Keyless.TlogThreshold, 1},
		{"timestamp_threshold", *c.Boundaries[1].Signatures.Authorities[0].Keyless.TimestampThreshold, 1},
		{"sct_threshold", *c.Boundaries[1].Signatures.Authorities[0].Keyless.SCTThreshold, 1},
		{"path", c.Path, ""},
	}
	for _, tc := range checks {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestParseExplicitValuesKept(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(`admin: ""
listen: "127.0.0.1:8080"
cache: {allow_ttl: 1h, tag_ttl: 5s}
`+minimal+`  - name: ci
    mode: warn
    signatures:
      authorities:
        - name: gh
          keyless: {trust: root, issuer: "https://issuer", subject: "me", tlog_threshold: 0}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin != "" {
		t.Errorf("explicit empty admin = %q, want disabled", c.Admin)
	}
	if c.Listen != "127.0.0.1:8080" || c.Cache.AllowTTL.D() != time.Hour || c.Cache.TagTTL.D() != 5*time.Second {
		t.Errorf("explicit values not kept: %+v", c)
	}
	if got := *c.Boundaries[1].Signatures.Authorities[0].Keyless.TlogThreshold; got != 0 {
		t.Errorf("explicit tlog_threshold 0 became %d", got)
	}
	if c.Boundaries[1].Mode != ModeWarn {
		t.Errorf("mode = %q", c.Boundaries[1].Mode)
	}
}

// TestParseErrors checks that each mistake is reported with file, line,
// key path and reason.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
		not  []string // none may appear
	}{
		{"unknown top-level key", "lisen: \":5000\"\n" + minimal, []string{"p.yaml:1: lisen: unknown key"}, nil},
		{"unknown nested key", minimal + "cache: {verdict: 3}\n", []string{"p.yaml:14: cache.verdict: unknown key"}, nil},
		{"unknown key in list item", strings.Replace(minimal, "    url:", "    urll: x\n    url:", 1), []string{"p.yaml:3: upstreams[0].urll: unknown key"}, nil},
		{"duplicate key", "listen: \":1\"\nlisten: \":2\"\n" + minimal, []string{"p.yaml:2: listen: duplicate key (first defined at line 1)"}, nil},
		{"duplicate nested key", strings.Replace(minimal, "    url:", "    name: x\n    url:", 1), []string{"p.yaml:3: upstreams[0].name: duplicate key (first defined at line 2)"}, nil},
		{"multiple documents", minimal + "---\nlisten: \":1\"\n", []string{"p.yaml:14: multiple YAML documents"}, nil},
		{"syntax error", "listen: [\n", []string{"p.yaml:"}, nil},
		{"not a mapping", "- a\n- b\n", []string{"p.yaml:1: must be a mapping"}, nil},
		{"string where list", strings.Replace(minimal, "keys: [k.pub]", "keys: k.pub", 1), []string{"p.yaml:6: trust[0].keys: must be a list"}, nil},
		{"int where string", "listen: 5000\n" + minimal, []string{"p.yaml:1: listen: must be a string"}, nil},
		{"string where int", minimal + "cache: {verdicts: many}\n", []string{"p.yaml:14: cache.verdicts: must be an integer"}, nil},
		{"yes is not a bool", strings.Replace(minimal, "    url:", "    insecure: yes\n    url:", 1), []string{"upstreams[0].insecure: must be true or false"}, nil},
		{"int overflow", minimal + "cache: {verdicts: 18446744073709551615}\n", []string{"p.yaml:14: cache.verdicts: integer 18446744073709551615 is out of range"}, nil},
		{"duration number", minimal + "upstream_timeout: 30\n", []string{"p.yaml:14: upstream_timeout: must be a duration string"}, nil},
		{"duration garbage", minimal + "cache: {allow_ttl: soon}\n", []string{"p.yaml:14: cache.allow_ttl: invalid duration \"soon\""}, nil},
		{"merge key", "x: &a {listen: \":1\"}\n<<: *a\n", []string{"merge keys"}, nil},
		{"custom tag", "listen: !foo \":1\"\n" + minimal, []string{"listen: unsupported YAML tag"}, nil},
		{"all collected", "lisen: 1\nadmin: nope\n" + minimal + "unmatched: allow\n", []string{
			"p.yaml:1: lisen: unknown key",
			"p.yaml:2: admin: \"nope\" is not host:port",
			"p.yaml:16: unmatched: must be",
		}, nil},
		{"a type error does not hide other problems", minimal + `    attestations:
      - {name: p, predicate_type: slsa, authorities: [a], max_age: 30}
unmatched: allow
`, []string{
			"p.yaml:15: boundaries[0].attestations[0].max_age: must be a duration string",
			`p.yaml:15: boundaries[0].attestations[0].predicate_type: "slsa" must be an absolute URI`,
			"p.yaml:16: unmatched: must be",
		}, []string{"boundaries[0].name", "authorities: at least one"}},
		{"consequences of a type error are not repeated", strings.Replace(minimal, "keys: [k.pub]", "keys: k.pub", 1), []string{"trust[0].keys: must be a list"}, []string{"set exactly one of keys"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.yaml), "p.yaml")
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not *ValidationError: %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain %q", err, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error\n%v\ncontains %q", err, n)
				}
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"", "# only a comment\n", "~\n"} {
		_, err := Parse([]byte(doc), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), "upstreams: at least one upstream is required") {
			t.Errorf("Parse(%q) = %v, want missing upstreams", doc, err)
		}
	}
}

func TestParseAliasBomb(t *testing.T) {
	t.Parallel()
	doc := "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h"} {
		doc += n + ": &" + n + " [*" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + "]\n"
		prev = n
	}
	if _, err := Parse([]byte(doc), "p.yaml"); err == nil {
		t.Fatal("Parse accepted an alias bomb")
	}
}

func TestParseTooLarge(t *testing.T) {
	t.Parallel()
	big := []byte(minimal + "# " + strings.Repeat("x", MaxFileSize) + "\n")
	if _, err := Parse(big, "p.yaml"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Parse(big) = %v", err)
	}
	p := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(p, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Load(big) = %v", err)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(p, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != p {
		t.Errorf("Path = %q, want %q", c.Path, p)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("listen: 1\n"+minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":1: listen:") {
		t.Errorf("Load(bad) = %v, want error prefixed with the file name and line", err)
	}
}

func TestDurationYAML(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(minimal+"verify_timeout: 720h\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.VerifyTimeout.D() != 720*time.Hour {
		t.Errorf("verify_timeout = %v", c.VerifyTimeout)
	}
	v, err := Duration(90 * time.Second).MarshalYAML()
	if err != nil || v != "1m30s" {
		t.Errorf("MarshalYAML = %v, %v", v, err)
	}
}

func TestValidationErrorListsAtMost100(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte("upstreams:\n"+strings.Repeat("  - {name: a.example, url: \"ftp://x\"}\n", 150)), "p.yaml")
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse = %v", err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxListed+1 || !strings.HasSuffix(lines[maxListed], "more problems") {
		t.Errorf("got %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if len(ve.Problems) <= maxListed {
		t.Errorf("Problems truncated to %d", len(ve.Problems))
	}
}
