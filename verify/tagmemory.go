package verify

import (
	lru "github.com/hashicorp/golang-lru/v2"
)

// tagMemorySize bounds the places whose cosign tag use is remembered.
const tagMemorySize = 4096

// tagNeed says which cosign tags of a place a run read: the .sig tag
// when its signatures were not decided before it, the .att tag when its
// attestations were not.
type tagNeed uint8

const (
	needSig tagNeed = 1 << iota
	needAtt
)

// tagMemory remembers, per place (upstream and repository), which
// cosign tags the last run that read the place needed, so reading ahead
// can leave out a tag the place's evidence made unnecessary last time: a
// repository signed with sigstore bundles (cosign v3, model signing)
// decides from its referrers or fallback index, and its .sig and .att
// tags are 404s that every cold verification would otherwise ask for.
//
// It only ever changes what is read ahead, never what a run reads: a
// run that needs a tag left out reads it itself, one round trip later
// (Verdict.Reads.MissedTags), and the place is remembered as needing it.
// So no verdict depends on it, and an attacker who shapes what a
// repository's last run needed costs that repository's next cold pull
// one round trip at most. Nothing is remembered until a run completes
// its reading of the place.
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

// skip returns the tags among want that the last run at the place did
// not need; nothing for a place not remembered.
func (m *tagMemory) skip(upstream, repo string, want tagNeed) tagNeed {
	if m == nil {
		return 0
	}
	need, ok := m.c.Peek(placeKey(upstream, repo))
	if !ok {
		return 0
	}
	return want &^ need
}

// record remembers the tags a run that read the place through needed.
func (m *tagMemory) record(upstream, repo string, need tagNeed) {
	if m == nil {
		return
	}
	m.c.Add(placeKey(upstream, repo), need)
}
