package verify

import (
	"strconv"
	"testing"
)

// The fingerprints remembered per repository are bounded, however many
// repository names clients make up; past the bound they are computed
// each time, and are the same.
func TestFingerprintForRemembersBoundedRepositories(t *testing.T) {
	t.Parallel()
	e, err := New(Policy{InsecureAllowUnmatched: true})
	if err != nil {
		t.Fatal(err)
	}
	first := e.FingerprintFor("hub", "repo/0")
	for i := range maxScopedRepos + 100 {
		if fp := e.FingerprintFor("hub", "repo/"+strconv.Itoa(i)); fp != first {
			t.Fatalf("repository %d: fingerprint %s, want %s", i, fp, first)
		}
	}
	s := e.scoped
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, m := range s.repos {
		n += len(m)
	}
	if n != maxScopedRepos || s.nRepos != maxScopedRepos {
		t.Fatalf("%d repositories remembered (counted %d), want %d", n, s.nRepos, maxScopedRepos)
	}
}
