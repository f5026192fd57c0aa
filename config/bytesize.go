package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ByteSize is a number of bytes written with a binary unit ("16MiB",
// "512KiB", "1GiB") or as a plain integer of bytes. Decimal units (MB, KB)
// are refused rather than guessed at: "16MB" could mean either.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

// UnmarshalYAML accepts an integer or an integer followed by B, KiB, MiB
// or GiB.
func (s *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New(`must be a size such as "16MiB", "512KiB" or a number of bytes`)
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseByteSize parses the forms ByteSize accepts.
func ParseByteSize(raw string) (ByteSize, error) {
	v := strings.TrimSpace(raw)
	shift := uint(0)
	for _, u := range byteUnits {
		if strings.HasSuffix(v, u.suffix) {
			v, shift = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: must be a size such as \"16MiB\", \"512KiB\" or a number of bytes", raw)
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q is too large", raw)
	}
	return ByteSize(n << shift), nil
}

// MarshalYAML writes the size in the largest unit that divides it.
func (s ByteSize) MarshalYAML() (any, error) { return s.String(), nil }

// String formats the size with the largest binary unit that divides it.
func (s ByteSize) String() string {
	for _, u := range byteUnits {
		if u.shift > 0 && s != 0 && int64(s)%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(s)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// Int64 returns the size in bytes.
func (s ByteSize) Int64() int64 { return int64(s) }
