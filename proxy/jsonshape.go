package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// knownSpelling returns the spelling a key encoding/json would take for a
// well-known manifest field. encoding/json matches keys to fields without
// regard to case, folding as bytes.EqualFold does ("ſize" and "size" are
// one key to it, and K (Kelvin) is k), so that is how a key is compared.
func knownSpelling(k string) (string, bool) {
	if isASCII(k) {
		return knownASCII([]byte(k))
	}
	for _, want := range knownFields {
		if strings.EqualFold(k, want) {
			return want, true
		}
	}
	return "", false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// plainKey says a raw key is its own decoded form: printable ASCII
// without escapes. Anything else (escapes, and non-ASCII bytes, which
// encoding/json may replace when they are not UTF-8) is left to the token
// walk, which compares keys as encoding/json decodes them.
func plainKey(raw []byte) bool {
	for _, c := range raw {
		if c == '\\' || c < 0x20 || c >= 0x80 {
			return false
		}
	}
	return true
}

// knownASCII is knownSpelling for a plain key, without allocating: no
// known field is longer than the buffer.
func knownASCII(raw []byte) (string, bool) {
	var buf [24]byte
	if len(raw) > len(buf) {
		return "", false
	}
	for i, c := range raw {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	want, ok := knownFields[string(buf[:len(raw)])]
	return want, ok
}

// errShapeSlow sends a document the fast shape check cannot judge (a key
// with an escape or outside ASCII) to the token walk.
var errShapeSlow = errors.New("needs the token walk")

// checkShapeFast is checkJSONShape for a document json.Valid accepted: one
// pass over the bytes without a token allocation each. Keys that are not
// plain ASCII are left to the token walk, which decodes them as
// encoding/json does.
func checkShapeFast(b []byte) error {
	s := shapeScan{b: b}
	s.ws()
	if s.i >= len(b) || b[s.i] != '{' {
		return errors.New("not a JSON object")
	}
	return s.object(1, false)
}

type shapeScan struct {
	b []byte
	i int
}

func (s *shapeScan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str skips the string at s.i and returns its raw contents.
func (s *shapeScan) str() []byte {
	start := s.i + 1
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return s.b[start : s.i-1]
		}
	}
	return s.b[start:]
}

// object walks an object whose '{' is at s.i, depth as walkObject counts.
func (s *shapeScan) object(depth int, freeKeys bool) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	s.i++
	var small [16][]byte
	seen := small[:0]
	for {
		s.ws()
		if s.b[s.i] == '}' {
			s.i++
			return nil
		}
		if s.b[s.i] == ',' {
			s.i++
			s.ws()
		}
		raw := s.str()
		if !plainKey(raw) {
			return errShapeSlow
		}
		for _, k := range seen {
			if bytes.Equal(k, raw) {
				return fmt.Errorf("duplicate key %q", truncate(string(raw), 64))
			}
		}
		seen = append(seen, raw)
		if !freeKeys {
			if want, known := knownASCII(raw); known && want != string(raw) {
				return fmt.Errorf("key %q must be spelled %q", truncate(string(raw), 64), want)
			}
		}
		s.ws()
		s.i++ // ':'
		if err := s.value(depth, string(raw) == "annotations"); err != nil {
			return err
		}
		s.ws()
	}
}

// value walks the value at s.i inside a container at depth.
func (s *shapeScan) value(depth int, freeKeys bool) error {
	s.ws()
	switch s.b[s.i] {
	case '{':
		return s.object(depth+1, freeKeys)
	case '[':
		if depth+1 > maxJSONDepth {
			return errors.New("JSON nested too deeply")
		}
		s.i++
		for {
			s.ws()
			switch s.b[s.i] {
			case ']':
				s.i++
				return nil
			case ',':
				s.i++
			}
			if err := s.value(depth+1, false); err != nil {
				return err
			}
		}
	case '"':
		s.str()
	default:
		// A number, true, false or null runs to the next delimiter.
		for ; s.i < len(s.b); s.i++ {
			switch s.b[s.i] {
			case ',', ']', '}', ' ', '\t', '\r', '\n':
				return nil
			}
		}
	}
	return nil
}
