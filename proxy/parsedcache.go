package proxy

import (
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultParsedManifestBytes bounds the parsed manifests kept when
// WithParsedManifestBytes is not given: the default of cache.manifest_mib.
const DefaultParsedManifestBytes = 64 << 20

// parsedEntryOverhead is charged for each parsed manifest on top of its
// manifest's length: the key and the parsed form's own fields.
const parsedEntryOverhead = 256

// parsedCache keeps parsed manifests by digest and media type, bounded in
// number and in the bytes of the manifests they were parsed from. The
// bytes bound is what matters: a parsed manifest holds about as much as
// its manifest (a 4 MiB manifest lists 28 000 layers), and the manifests
// parsed include denied ones (to tell evidence apart), so anyone who can
// push to a repository the proxy fronts could otherwise pin thousands of
// them.
type parsedCache struct {
	c        *lru.Cache[string, parsedEntry]
	bytes    atomic.Int64
	maxBytes int64
}

type parsedEntry struct {
	pm   *parsedManifest
	cost int64
}

func newParsedCache(entries int, maxBytes int64) (*parsedCache, error) {
	pc := &parsedCache{maxBytes: maxBytes}
	c, err := lru.NewWithEvict(entries, func(_ string, e parsedEntry) { pc.bytes.Add(-e.cost) })
	if err != nil {
		return nil, err
	}
	pc.c = c
	return pc, nil
}

func (pc *parsedCache) get(key string) (*parsedManifest, bool) {
	e, ok := pc.c.Get(key)
	return e.pm, ok
}

// add keeps pm, parsed from manifestLen bytes, evicting the least recently
// used until the kept manifests fit the bound again. One that does not fit
// alone is not kept.
func (pc *parsedCache) add(key string, pm *parsedManifest, manifestLen int) {
	cost := int64(manifestLen) + parsedEntryOverhead
	if cost > pc.maxBytes {
		return
	}
	if found, _ := pc.c.ContainsOrAdd(key, parsedEntry{pm: pm, cost: cost}); found {
		return
	}
	pc.bytes.Add(cost)
	for pc.bytes.Load() > pc.maxBytes {
		if _, _, ok := pc.c.RemoveOldest(); !ok {
			return
		}
	}
}
