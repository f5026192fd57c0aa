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
			st, err := parseStatement([]byte(head + tc.tail))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err == nil && len(st.predicate) != tc.keys {
				t.Fatalf("predicate has %d keys, want %d", len(st.predicate), tc.keys)
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
	if _, err := parseStatement([]byte(good)); err != nil {
		t.Fatalf("well-formed statement refused: %v", err)
	}
	for name, b := range map[string]string{
		"trailing object":      good + `{"_type":"x"}`,
		"trailing garbage":     good + ` x`,
		"subject not an array": `{"_type":"` + StatementV1 + `","subject":"x","predicateType":"p"}`,
		"truncated":            good[:len(good)-3],
	} {
		if _, err := parseStatement([]byte(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
