package config

import (
	"errors"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// UnmarshalYAML accepts only a Go duration string. A bare number is refused
// rather than guessed at: "30" could mean seconds or nanoseconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return errors.New(`must be a duration string such as "30s" or "720h"`)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("invalid duration %q: must be a duration string such as \"30s\" or \"720h\"", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration in the form UnmarshalYAML accepts.
func (d Duration) MarshalYAML() (any, error) {
	return d.String(), nil
}

// String formats the duration like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }
