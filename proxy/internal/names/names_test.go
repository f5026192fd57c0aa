package names

import (
	"regexp"
	"strings"
	"testing"
)

// The grammar as regexps: the oracles the hand-written matchers must agree
// with on every input.
var (
	componentRE  = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$`)
	repositoryRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*)*$`)
)

var seeds = []string{"", "a", "alpine", "library/alpine", "a.b", "a_b", "a__b", "a___b", "a-b", "a--b", "a-", "-a", "a.", ".a",
	"a._b", "a-_b", "a..b", "A", "a/b", "a//b", "/a", "a/", "a:5000", "0", "a.b-c__d---e/f", "é", "a\x00", "ml/llm/v2"}

func TestMatchersAgreeWithGrammar(t *testing.T) {
	t.Parallel()
	for _, s := range append(seeds, strings.Repeat("a", 256), strings.Repeat("a/", 127)+"a") {
		if got, want := IsComponent(s), componentRE.MatchString(s); got != want {
			t.Errorf("IsComponent(%q) = %v, want %v", s, got, want)
		}
		want := repositoryRE.MatchString(s) && len(s) <= MaxRepositoryLength
		if got := IsRepository(s); got != want {
			t.Errorf("IsRepository(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzMatchers(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := IsComponent(s), componentRE.MatchString(s); got != want {
			t.Fatalf("IsComponent(%q) = %v, regexp says %v", s, got, want)
		}
		want := repositoryRE.MatchString(s) && len(s) <= MaxRepositoryLength
		if got := IsRepository(s); got != want {
			t.Fatalf("IsRepository(%q) = %v, regexp says %v", s, got, want)
		}
	})
}
