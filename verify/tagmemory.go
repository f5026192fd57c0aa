package verify

import (
	lru "github.com/hashicorp/golang-lru/v2"
)

// tagMemorySize bounds the places whose cosign tag use is remembered.
const tagMemorySize = 4096

// tagNeed says which evidence of a place a run needed: the .sig tag
// when its signatures were not decided before it, the .att tag when its
// attestations were not, and the index unless the .sig tag alone decided.
type tagNeed uint8

const (
	needSig tagNeed = 1 << iota
	needAtt
	// needIndex is the place's referrers list and fallback tag. Only a
	// run that was decided by the .sig tag alone did not need them.
	needIndex
)

// tagMemory remembers, per place (upstream and repository), which
// cosign tags the last run that read the place needed, so reading ahead
// can leave out a tag the place's evidence made unnecessary last time: a
// repository signed with sigstore bundles (cosign v3, model signing)
// decides from its referrers or fallback index, and its .sig and .att
// tags are 404s that every cold verification would otherwise ask for.
// The other way round, a repository signed with `cosign sign` decides
// from its .sig tag, and its referrers and fallback tag are what every
// cold verification asks for in vain: a place whose last run the .sig
// tag decided alone has it read first (run.sigFirst), and the index
// neither read ahead nor, when the tag decides again, read at all.
//
// A cosign tag left out is only left out of reading ahead: a run that
// needs it reads it itself, one round trip later
// (Verdict.Reads.MissedTags), and the place is remembered as needing it.
// The index is the same when the .sig tag read first does not decide. So
// an attacker who shapes what a repository's last run needed costs that
// repository's next cold pull one round trip at most, and can make no
// run allow what reading in order would deny: what counts towards a
// decision only grows with what is read (run.sigFirst). Nothing is
// remembered until a run completes its reading of the place.
type tagMemory struct {
	c *lru.Cache[string, tagNeed]
}

func newTagMemory() *tagMemory {
	c, err := lru.New[string, tagNeed](tagMemorySize)
	if err != nil {
		// Only a size below 1 fails.
		panic(err)
	}
	return &tagMemory{c: c}
}

func placeKey(upstream, repo string) string { return upstream + "\x00" + repo }

// skip returns the cosign tags among want that the last run at the
// place did not need; nothing for a place not remembered. The index is
// never among them: it is left out only where the .sig tag is read
// first (sigFirst).
func (m *tagMemory) skip(upstream, repo string, want tagNeed) tagNeed {
	if m == nil {
		return 0
	}
	need, ok := m.c.Peek(placeKey(upstream, repo))
	if !ok {
		return 0
	}
	return want &^ need &^ needIndex
}

// sigFirst says the last run at the place was decided by its .sig tag
// alone: it read the tag and did not need the index.
func (m *tagMemory) sigFirst(upstream, repo string) bool {
	if m == nil {
		return false
	}
	need, ok := m.c.Peek(placeKey(upstream, repo))
	return ok && need&needSig != 0 && need&needIndex == 0
}

// record remembers the tags a run that read the place through needed.
func (m *tagMemory) record(upstream, repo string, need tagNeed) {
	if m == nil {
		return
	}
	m.c.Add(placeKey(upstream, repo), need)
}
