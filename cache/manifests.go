package cache

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"math"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/portcullis-oci/portcullis/verify"
)

// ManifestEntryOverhead is the number of bytes each cached manifest is
// charged on top of the length of its bytes. It approximates the digest
// key, the list element and the map slot, so that a budget cannot be
// exceeded many times over by a flood of tiny manifests.
const ManifestEntryOverhead = 256

// Manifests is an LRU of manifests keyed by digest and bounded by the total
// size of what it holds: each manifest costs len(Bytes) plus
// ManifestEntryOverhead, and least recently used manifests are evicted until
// the total is within the budget. It is safe for concurrent use.
//
// Content addressed by digest never changes, so entries do not expire. Add
// re-hashes the bytes and refuses a manifest that does not match its
// digest, so a caller's mistake cannot make the cache serve other bytes
// under a trusted digest.
type Manifests struct {
	maxBytes int64

	mu    sync.Mutex
	bytes int64 // total cost of the entries held
	lru   *simplelru.LRU[string, verify.Manifest]
}

// NewManifests returns a cache holding at most maxBytes of manifests.
func NewManifests(maxBytes int64) (*Manifests, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("manifest cache budget must be positive, got %d bytes", maxBytes)
	}
	c := &Manifests{maxBytes: maxBytes}
	// The entry count is bounded by the byte budget, not by simplelru; it
	// does not preallocate, so the count limit can be effectively infinite.
	lru, err := simplelru.NewLRU(math.MaxInt, func(_ string, m verify.Manifest) {
		c.bytes -= manifestCost(m)
	})
	if err != nil {
		return nil, fmt.Errorf("failed to create manifest cache: %w", err)
	}
	c.lru = lru
	return c, nil
}

// Get returns the manifest with the given digest ("sha256:…").
//
// The returned Bytes are shared with the cache and must not be modified.
func (c *Manifests) Get(digest string) (verify.Manifest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(digest)
}

// Add caches m under m.Digest. A manifest whose bytes do not hash to its
// digest, whose digest algorithm is not sha256 or sha512, or whose cost
// alone exceeds the budget is not cached.
//
// The cache keeps m.Bytes without copying; the caller must not modify them
// afterwards.
func (c *Manifests) Add(m verify.Manifest) {
	cost := manifestCost(m)
	if len(m.Bytes) == 0 || cost > c.maxBytes || !digestMatches(m) {
		return
	}
	key := m.Digest.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	// simplelru replaces an existing value without calling the eviction
	// callback, so account for the old entry here.
	if old, ok := c.lru.Peek(key); ok {
		c.bytes -= manifestCost(old)
	}
	c.lru.Add(key, m)
	c.bytes += cost
	for c.bytes > c.maxBytes {
		if _, _, ok := c.lru.RemoveOldest(); !ok {
			break
		}
	}
}

// Len reports the number of manifests held.
func (c *Manifests) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Bytes reports the total cost of the manifests held, as counted against the
// budget.
func (c *Manifests) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Purge removes every manifest.
func (c *Manifests) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
}

func manifestCost(m verify.Manifest) int64 {
	return int64(len(m.Bytes)) + ManifestEntryOverhead
}

func digestMatches(m verify.Manifest) bool {
	var got []byte
	switch m.Digest.Algorithm {
	case "sha256":
		s := sha256.Sum256(m.Bytes)
		got = s[:]
	case "sha512":
		s := sha512.Sum512(m.Bytes)
		got = s[:]
	default:
		return false
	}
	// The stored digest string is what Get is keyed by, so it must be the
	// canonical lowercase spelling of the hash, not merely decode to it.
	return m.Digest.Hex == hex.EncodeToString(got)
}
