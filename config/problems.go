package config

import (
	"bytes"
	"fmt"
	"reflect"

	"go.yaml.in/yaml/v3"
)

// ProblemAt returns a Problem at the key path (for example
// "upstreams[0].auth.password_env"), located at the line of that key or of
// its closest parent in the file the configuration was read from. Checks
// that need more than the file itself (the environment, a compiled policy)
// use it so that every problem of one run reads the same way.
func (c *Config) ProblemAt(path, format string, args ...any) Problem {
	r := reporter{file: c.Path, lines: c.lines}
	return Problem{File: c.Path, Line: r.lineOf(path), Path: path, Message: fmt.Sprintf(format, args...)}
}

// Salvage decodes what it can of a configuration that Parse refused, keys
// and types that are wrong left out, so that a checker can still look at
// the files, environment variables and conditions it names and report
// their problems in the same run as the file's own. It returns nil when
// the document is not YAML. The result has not been validated: it is for
// reporting, never for serving.
func Salvage(data []byte, path string) *Config {
	if len(data) > MaxFileSize {
		return nil
	}
	w := &walker{reporter: reporter{file: path, lines: map[string]int{}}}
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&root); err != nil || len(root.Content) != 1 {
		return nil
	}
	// The walk records each key's line and prunes what it refuses, so
	// that the rest decodes.
	w.walk(root.Content[0], reflect.TypeFor[Config](), "")
	if w.nodes > maxNodes {
		return nil
	}
	cfg := &Config{}
	if err := root.Decode(cfg); err != nil {
		return nil
	}
	cfg.lines = w.lines
	cfg.Path = path
	cfg.applyDefaults()
	return cfg
}
