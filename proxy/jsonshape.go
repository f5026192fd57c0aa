package proxy

import (
	"bytes"
	"encoding/json"
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
// encoding/json may replace when they are not UTF-8) is decoded by
// encoding/json before it is compared.
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

// checkJSONShape requires b to be exactly one JSON object whose objects
// have no duplicate keys and whose well-known keys are spelled exactly.
// Keys are compared as encoding/json decodes them, so that no two keys it
// would take for one pass as two.
//
// It is one pass over the bytes, linear in their length whatever they
// hold: a manifest is read before anything about it is known, from an
// upstream anyone may push to, so its cost must not depend on its shape.
// The reference it must agree with is a walk of encoding/json's tokens
// (checkShapeTokens in jsonshape_test.go), which costs a token allocation each.
func checkJSONShape(b []byte) error {
	if !json.Valid(b) {
		// Unmarshal finds the syntax error by the same scan, before it
		// decodes anything, and says where it is.
		var v struct{}
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		return errors.New("invalid JSON")
	}
	return scanShape(b)
}

// scanShape is checkJSONShape for a document json.Valid accepted.
func scanShape(b []byte) error {
	s := shapeScan{b: b}
	s.ws()
	if s.i >= len(b) || b[s.i] != '{' {
		return errors.New("not a JSON object")
	}
	return s.object(1, false)
}

// shapeScan walks a document json.Valid accepted, so it need not check
// the grammar again.
type shapeScan struct {
	b []byte
	i int
	// doc is b as a string, made once an object has more keys than a scan
	// of the ones before can check cheaply; its substrings are the plain
	// keys of such objects' sets, so a key costs no allocation.
	doc string
}

// smallObject is how many keys an object may have before its duplicates
// are looked up in a set: manifests' objects have a handful, and below
// this a scan of the keys seen is cheaper than a map. Past it the scan
// would make a document of many distinct keys (a 4 MiB manifest holds
// 700 000) cost a quadratic number of comparisons.
const smallObject = 16

// keySet is the keys of one object so far: plain keys by their place in
// the document while there are few, then every key in many.
type keySet struct {
	small [smallObject][2]int
	n     int
	many  map[string]struct{}
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

// str skips the string at s.i and returns where its raw contents start
// and end.
func (s *shapeScan) str() (start, end int) {
	start = s.i + 1
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return start, s.i - 1
		}
	}
	return start, len(s.b)
}

// key is b[start:end] as a string, without a copy of its own.
func (s *shapeScan) key(start, end int) string {
	if s.doc == "" {
		s.doc = string(s.b)
	}
	return s.doc[start:end]
}

// add adds a key to an object's set and reports whether the object
// already had it. A plain key is b[start:end]; any other is decoded.
func (s *shapeScan) add(ks *keySet, start, end int, decoded string, plain bool) bool {
	if ks.many == nil && plain {
		raw := s.b[start:end]
		for _, k := range ks.small[:ks.n] {
			if bytes.Equal(s.b[k[0]:k[1]], raw) {
				return true
			}
		}
		if ks.n < len(ks.small) {
			ks.small[ks.n] = [2]int{start, end}
			ks.n++
			return false
		}
	}
	if ks.many == nil {
		ks.many = make(map[string]struct{}, 4*smallObject)
		for _, k := range ks.small[:ks.n] {
			ks.many[s.key(k[0], k[1])] = struct{}{}
		}
	}
	k := decoded
	if plain {
		k = s.key(start, end)
	}
	if _, dup := ks.many[k]; dup {
		return true
	}
	ks.many[k] = struct{}{}
	return false
}

// object walks an object whose '{' is at s.i. depth counts the containers
// it is in, itself included.
func (s *shapeScan) object(depth int, freeKeys bool) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	s.i++
	var ks keySet
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
		start, end := s.str()
		raw := s.b[start:end]
		plain := plainKey(raw)
		var k string
		if plain {
			if !freeKeys {
				if want, known := knownASCII(raw); known && want != string(raw) {
					return fmt.Errorf("key %q must be spelled %q", truncate(string(raw), 64), want)
				}
			}
		} else {
			// Escapes, and bytes outside ASCII that may not be UTF-8:
			// decoded by encoding/json itself, quotes included, so the
			// key is exactly what it would match fields by.
			var err error
			if k, err = decodeKey(s.b[start-1 : end+1]); err != nil {
				return fmt.Errorf("invalid JSON object key: %w", err)
			}
			if !freeKeys {
				if want, known := knownSpelling(k); known && want != k {
					return fmt.Errorf("key %q must be spelled %q", truncate(k, 64), want)
				}
			}
		}
		if s.add(&ks, start, end, k, plain) {
			if plain {
				k = string(raw)
			}
			return fmt.Errorf("duplicate key %q", truncate(k, 64))
		}
		annotations := k == "annotations" || (plain && string(raw) == "annotations")
		s.ws()
		s.i++ // ':'
		if err := s.value(depth, annotations); err != nil {
			return err
		}
		s.ws()
	}
}

// decodeKey decodes a quoted key as encoding/json does. It is a function
// of its own so that only a decoded key is allocated: a variable whose
// address Unmarshal takes lives on the heap.
func decodeKey(quoted []byte) (string, error) {
	var k string
	err := json.Unmarshal(quoted, &k)
	return k, err
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
