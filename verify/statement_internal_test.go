package verify

import (
	"strings"
	"testing"
)

// The in-toto predicate is optional: a statement without one (or with a
// null one) has an empty predicate, while one that is not an object is
// refused.
func TestParseStatementPredicate(t *testing.T) {
	t.Parallel()
	head := `{"_type":"` + StatementV1 + `","subject":[{"name":"x","digest":{"sha256":"` + strings.Repeat("a", 64) + `"}}],"predicateType":"https://example.com/p"`
	for _, tc := range []struct {
		name, tail string
		ok         bool
		keys       int
	}{
		{name: "absent", tail: `}`, ok: true},
		{name: "null", tail: `,"predicate":null}`, ok: true},
		{name: "object", tail: `,"predicate":{"a":1,"b":{}}}`, ok: true, keys: 2},
		{name: "array", tail: `,"predicate":[1]}`},
		{name: "string", tail: `,"predicate":"x"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseStatement([]byte(head+tc.tail), DefaultPredicateDepth)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err != nil {
				return
			}
			m, err := st.object()
			if err != nil || len(m) != tc.keys {
				t.Fatalf("predicate has %d keys (%v), want %d", len(m), err, tc.keys)
			}
		})
	}
}

// A statement is exactly one JSON object of the right shape: trailing
// data or a field of the wrong type is a parse failure, never a partly
// filled statement.
func TestParseStatementStrict(t *testing.T) {
	t.Parallel()
	subject := `[{"name":"x","digest":{"sha256":"` + strings.Repeat("a", 64) + `"}}]`
	good := `{"_type":"` + StatementV1 + `","subject":` + subject + `,"predicateType":"p","predicate":{}}`
	if _, err := parseStatement([]byte(good), DefaultPredicateDepth); err != nil {
		t.Fatalf("well-formed statement refused: %v", err)
	}
	for name, b := range map[string]string{
		"trailing object":      good + `{"_type":"x"}`,
		"trailing garbage":     good + ` x`,
		"subject not an array": `{"_type":"` + StatementV1 + `","subject":"x","predicateType":"p"}`,
		"truncated":            good[:len(good)-3],
	} {
		if _, err := parseStatement([]byte(b), DefaultPredicateDepth); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Nesting is counted on the bytes: brackets inside strings, escaped
// quotes included, do not count.
func TestJSONDepth(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{
		``:                        0,
		`1`:                       0,
		`{}`:                      1,
		`[[],[[]]]`:               3,
		`{"a":"[[[{{{"}`:          1,
		`{"a":"\"[[[","b":[{}]}`:  3,
		`{"a":"\\","b":[[]]}`:     3,
		`"[[[`:                    0,
		strings.Repeat("[", 1000): 1000,
	} {
		if got := jsonDepth([]byte(in), 1<<20); got != want {
			t.Errorf("jsonDepth(%.20q) = %d, want %d", in, got, want)
		}
	}
	// The scan stops once past the limit.
	if got := jsonDepth([]byte(strings.Repeat("[", 1000)), 10); got != 11 {
		t.Errorf("jsonDepth past the limit = %d, want 11", got)
	}
}

// A predicate field is looked up as in a parsed object: exact keys, the
// last of duplicates, nothing through a value that is not an object.
func TestStatementField(t *testing.T) {
	t.Parallel()
	st := &statement{Predicate: []byte(`{"FinishedOn":"x","m":{"t":"first","t":"last"},"s":"str","n":null,"big":[{},{}]}`)}
	for _, tc := range []struct {
		path []string
		want string
		ok   bool
	}{
		{[]string{"m", "t"}, `"last"`, true},
		{[]string{"finishedOn"}, "", false},
		{[]string{"s", "x"}, "", false},
		{[]string{"n", "x"}, "", false},
		{[]string{"big"}, `[{},{}]`, true},
		{[]string{"missing"}, "", false},
	} {
		got, ok := st.field(tc.path...)
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("field(%q) = %s, %v; want %s, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
	if st.predicate != nil {
		t.Error("field parsed the whole predicate")
	}
}

func TestFmtSize(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		16 << 20: "16 MiB", 16<<20 - 1<<19: "15.5 MiB", 4 << 10: "4 KiB", 1536: "1.5 KiB", 100: "100 bytes",
	} {
		if got := fmtSize(n); got != want {
			t.Errorf("fmtSize(%d) = %q, want %q", n, got, want)
		}
	}
}
