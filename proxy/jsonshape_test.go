package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

// manyKeys is an object of n keys "0", "1", … followed by extra members.
func manyKeys(n int, extra string) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Quote(strconv.Itoa(i)) + ":0")
	}
	if extra != "" {
		sb.WriteString("," + extra)
	}
	sb.WriteByte('}')
	return sb.String()
}

// TestJSONShapeManyKeys: objects with more keys than a scan checks are
// checked by a set, with the same answers: a duplicate is found wherever
// it is and however it is written, and well-known keys keep their
// spelling.
func TestJSONShapeManyKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc string
		err       string // "" for a document that passes
	}{
		{"distinct keys past the scan", manyKeys(5000, ""), ""},
		{"duplicate of the first key, last of many", manyKeys(5000, `"0":1`), `duplicate key "0"`},
		{"duplicate of the key that fills the scan", manyKeys(smallObject, `"`+strconv.Itoa(smallObject-1)+`":1`), "duplicate key"},
		{"duplicate of a key from the scan, after it", manyKeys(smallObject+1, `"3":1`), `duplicate key "3"`},
		{"duplicate of a key in the set", manyKeys(100, `"70":1`), `duplicate key "70"`},
		{"escaped duplicate of a scanned key", manyKeys(3, `"\u0031":1`), `duplicate key "1"`},
		{"escaped duplicate of a key in the set", manyKeys(100, `"\u0037\u0030":1`), `duplicate key "70"`},
		{"plain duplicate of an escaped key", `{"\u0061":1,` + manyKeys(40, `"a":2`)[1:], `duplicate key "a"`},
		{"escaped keys, distinct", `{"\u0061":1,"\u0062":2,` + manyKeys(40, "")[1:], ""},
		{"misspelt known key past the scan", manyKeys(40, `"Layers":1`), `key "Layers" must be spelled "layers"`},
		{"escaped misspelt known key past the scan", manyKeys(40, `"L\u0061yers":1`), `key "Layers" must be spelled "layers"`},
		{"annotations keep their keys past the scan", `{"annotations":` + manyKeys(40, `"Layers":1,"layers":2`) + `}`, ""},
		{"escaped annotations keep their keys", `{"\u0061nnotations":{"Layers":1,"layers":2}}`, ""},
		{"duplicates inside annotations", `{"annotations":` + manyKeys(40, `"39":1`) + `}`, `duplicate key "39"`},
		{"a nested object has keys of its own", `{"a":` + manyKeys(40, "") + `,` + manyKeys(40, "")[1:], ""},
		{"invalid JSON", manyKeys(40, "") + "x", "invalid JSON: invalid character 'x' after top-level value"},
		// encoding/json decodes each byte that is not UTF-8 as U+FFFD, so
		// these are one key to it, however few keys came before.
		{"two invalid UTF-8 keys", "{\"\x80\":1,\"\x81\":2}", "duplicate key"},
		{"two invalid UTF-8 keys past the scan", manyKeys(40, "\"\x80\":1,\"\xff\":2"), "duplicate key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkJSONShape([]byte(tc.doc))
			ref := checkShapeTokens([]byte(tc.doc))
			if (err == nil) != (ref == nil) {
				t.Fatalf("checkJSONShape: %v; token walk: %v", err, ref)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("checkJSONShape: %v, want it accepted", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("checkJSONShape: %v, want %q", err, tc.err)
			}
		})
	}
}

// TestJSONShapeAllocations: a manifest whose keys are plain ASCII, as
// every registry writes them, is checked without an allocation; only keys
// with escapes or bytes outside ASCII are decoded, and only objects past
// smallObject keys build a set.
func TestJSONShapeAllocations(t *testing.T) {
	desc := `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + strings.Repeat("a", 64) + `","size":123,"annotations":{"org.opencontainers.image.title":"model.safetensors"}}`
	doc := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + desc +
		`,"layers":[` + desc + `,` + desc + `],"annotations":{"org.opencontainers.image.created":"2026-12-02T00:00:00Z","a":"b"}}`)
	if err := checkJSONShape(doc); err != nil {
		t.Fatal(err)
	}
	// json.Valid is left out: its scanner comes from a sync.Pool, which
	// the race detector empties at random.
	if n := testing.AllocsPerRun(100, func() { _ = scanShape(doc) }); n != 0 {
		t.Errorf("the shape scan of a plain manifest: %v allocations, want 0", n)
	}
}

// TestJSONShapeDepth: nesting is accepted up to maxJSONDepth containers,
// objects and arrays alike, and refused one past it.
func TestJSONShapeDepth(t *testing.T) {
	t.Parallel()
	objects := func(n int) string { return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1) }
	arrays := func(n int) string { return `{"a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + "}" }
	mixed := func(n int) string {
		return strings.Repeat(`{"a":[`, (n-1)/2) + strings.Repeat("[", (n-1)%2) + "{}" + strings.Repeat("]", (n-1)%2) + strings.Repeat("]}", (n-1)/2)
	}
	for name, doc := range map[string]func(int) string{"objects": objects, "arrays": arrays, "mixed": mixed} {
		for _, n := range []int{maxJSONDepth, maxJSONDepth + 1} {
			b := []byte(doc(n))
			err, ref := checkJSONShape(b), checkShapeTokens(b)
			if want := n <= maxJSONDepth; (err == nil) != want || (ref == nil) != want {
				t.Errorf("%s nested %d deep: checkJSONShape %v, token walk %v; want accepted = %v", name, n, err, ref, want)
			}
		}
	}
}

// FuzzJSONShape: the one-pass shape check agrees with the token walk on
// every document, valid or not.
func FuzzJSONShape(f *testing.F) {
	for _, seed := range []string{
		`{"schemaVersion":2,"layers":[{"digest":"x","size":1}],"annotations":{"a":"b","A":"c"}}`,
		`{"a":1,"a":2}`, `{"Layers":[]}`, `{"ſize":1}`, `{"l\u0061yers":1,"layers":2}`,
		`{"x":[[[[{}]]]],"y":{"z":null,"w":true,"v":-1.5e3}}`, ` {"a" : [ 1 , 2 ] , "b" : { } } `,
		`[1]`, `{"a":1} {}`, `{"\xff":1,"\xfe":2}`, "{\"\xff\":1,\"\xfe\":2}", `{"a":"\"}\\"}`,
		manyKeys(smallObject+1, `"\u0030":1`), manyKeys(smallObject, `"a":1`), manyKeys(40, `"\u0031\u0035":1`),
		manyKeys(40, `"Layers":1`), `{"\u0061nnotations":{"Layers":1,"layers":2}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		slow := checkShapeTokens(b)
		fast := checkJSONShape(b)
		if (slow == nil) != (fast == nil) {
			t.Fatalf("token walk: %v; checkJSONShape: %v; input %q", slow, fast, b)
		}
	})
}

// checkShapeTokens is checkJSONShape by encoding/json's tokens, keys
// decoded as encoding/json decodes them: the reference checkJSONShape must
// agree with (FuzzJSONShape). It allocates a token per value, so the
// proxy does not use it.
func checkShapeTokens(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	if err := walkObject(dec, 1, false); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after JSON object")
	}
	return nil
}

// walkObject consumes an object whose '{' was already read.
func walkObject(dec *json.Decoder, depth int, freeKeys bool) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		k, ok := tok.(string)
		if !ok {
			return errors.New("invalid JSON object key")
		}
		if seen[k] {
			return fmt.Errorf("duplicate key %q", truncate(k, 64))
		}
		seen[k] = true
		if !freeKeys {
			if want, known := knownSpelling(k); known && want != k {
				return fmt.Errorf("key %q must be spelled %q", truncate(k, 64), want)
			}
		}
		if err := walkValue(dec, depth, k == "annotations"); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

func walkValue(dec *json.Decoder, depth int, freeKeys bool) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return walkObject(dec, depth+1, freeKeys)
	case '[':
		if depth+1 > maxJSONDepth {
			return errors.New("JSON nested too deeply")
		}
		for dec.More() {
			if err := walkValue(dec, depth+1, false); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return err
	default:
		return errors.New("invalid JSON")
	}
}
