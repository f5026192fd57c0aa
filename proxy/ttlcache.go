package proxy

import (
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// ttlCache is a bounded LRU whose entries also expire. It stands in for
// golang-lru's expirable package, whose v2 caches each start a goroutine
// that can never be stopped; expiry here is checked on read instead.
type ttlCache[K comparable, V any] struct {
	c   *lru.Cache[K, ttlEntry[V]]
	ttl time.Duration
	// now is the clock; tests replace it before first use.
	now func() time.Time
	// removed counts entries evicted or removed, so that a caller can
	// tell that what it added earlier is all still there.
	removed atomic.Uint64
}

type ttlEntry[V any] struct {
	v       V
	expires time.Time
}

func newTTLCache[K comparable, V any](size int, ttl time.Duration) *ttlCache[K, V] {
	t := &ttlCache[K, V]{ttl: ttl, now: time.Now}
	c, err := lru.NewWithEvict[K, ttlEntry[V]](size, func(K, ttlEntry[V]) { t.removed.Add(1) })
	if err != nil {
		// Only a non-positive size fails; sizes are constants.
		panic(err)
	}
	t.c = c
	return t
}

func (t *ttlCache[K, V]) add(k K, v V) {
	t.c.Add(k, ttlEntry[V]{v: v, expires: t.now().Add(t.ttl)})
}

// addUntil stores v until expires, never longer than the cache's TTL.
func (t *ttlCache[K, V]) addUntil(k K, v V, expires time.Time) {
	now := t.now()
	if limit := now.Add(t.ttl); expires.After(limit) {
		expires = limit
	}
	if !now.Before(expires) {
		return
	}
	t.c.Add(k, ttlEntry[V]{v: v, expires: expires})
}

func (t *ttlCache[K, V]) get(k K) (V, bool) {
	e, ok := t.c.Get(k)
	if !ok {
		var zero V
		return zero, false
	}
	if !t.now().Before(e.expires) {
		// Left for the LRU bound to evict: removing here could race with
		// a concurrent add of a fresh entry.
		var zero V
		return zero, false
	}
	return e.v, true
}
