package shared

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/redis/go-redis/v9"

	"github.com/portcullis-oci/portcullis/verify"
)

// VerdictCache is the in-process cache Verdicts puts in front of Redis;
// cache.Verdicts satisfies it (the proxy's VerdictCache, plus nothing).
type VerdictCache interface {
	Get(key string) (verify.Verdict, bool)
	Add(key string, v verify.Verdict)
	Remove(key string)
	RemoveFunc(match func(verify.Verdict) bool) int
}

// verdictFormat is the version of the stored verdict document; a change
// of layout changes it (and the "v1:" of the keys), so replicas of two
// versions never read each other's values.
const verdictFormat = 1

// removeScanBatch is how many keys one SCAN step of RemoveFunc asks for.
const removeScanBatch = 256

// Verdicts is a verdict cache in two levels: l1, the in-process cache of
// this replica's own decisions, and Redis, shared by every replica. A
// verdict read from Redis is kept locally in a second LRU for exactly the
// lifetime it had left, never longer. It satisfies the proxy's
// VerdictCache.
type Verdicts struct {
	l1       VerdictCache
	rdb      redis.UniversalClient
	guard    *Guard
	prefix   string // <key_prefix>v1:verdict:
	allowTTL time.Duration
	denyTTL  time.Duration
	maxValue int
	now      func() time.Time

	mu     sync.Mutex
	remote *simplelru.LRU[string, remoteVerdict]
	// along is where GetAlong keeps the manifest bytes it reads; nil
	// without ReadBytesWith.
	along *Manifests
}

type remoteVerdict struct {
	v       verify.Verdict
	expires time.Time
}

// VerdictsOptions configures NewVerdicts.
type VerdictsOptions struct {
	// KeyPrefix starts every key (DefaultKeyPrefix when empty).
	KeyPrefix string
	// AllowTTL and DenyTTL are the lifetimes in Redis: the local ones.
	AllowTTL, DenyTTL time.Duration
	// Size bounds the local copies of verdicts read from Redis.
	Size int
	// MaxValueBytes bounds a stored value (DefaultMaxValueBytes when
	// zero). A verdict whose document is larger stays local.
	MaxValueBytes int
	// Now is the clock (time.Now when nil); tests drive it.
	Now func() time.Time
}

// NewVerdicts puts Redis behind l1. guard bounds and accounts every call.
func NewVerdicts(l1 VerdictCache, rdb redis.UniversalClient, guard *Guard, o VerdictsOptions) (*Verdicts, error) {
	if l1 == nil || rdb == nil || guard == nil {
		return nil, errors.New("shared verdicts need a local cache, a redis client and a guard")
	}
	if o.AllowTTL < 0 || o.DenyTTL < 0 {
		return nil, fmt.Errorf("verdict TTLs must not be negative, got allow %v, deny %v", o.AllowTTL, o.DenyTTL)
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	remote, err := simplelru.NewLRU[string, remoteVerdict](max(o.Size, 1), nil)
	if err != nil {
		return nil, err
	}
	guard.Seed("verdict_get", "verdict_set", "verdict_del", "verdict_scan")
	return &Verdicts{
		l1: l1, rdb: rdb, guard: guard,
		prefix:   o.KeyPrefix + "v1:verdict:",
		allowTTL: o.AllowTTL, denyTTL: o.DenyTTL,
		maxValue: o.MaxValueBytes,
		now:      o.Now,
		remote:   remote,
	}, nil
}

// verdictDoc is the stored form. K binds it to its key: a valid document
// copied under another key does not match that key's binding.
type verdictDoc struct {
	V       int             `json:"v"`
	K       string          `json:"k"`
	Expires int64           `json:"exp"` // Unix milliseconds
	Verdict *verify.Verdict `json:"verdict"`
}

// verdictBinding is the hex SHA-256 of the logical key, domain-separated
// so that a document of another kind of shared state never binds here.
func verdictBinding(key string) string {
	sum := sha256.Sum256([]byte("portcullis/v1/verdict\x00" + key))
	return hex.EncodeToString(sum[:])
}

// Get returns the verdict for key: this replica's own, else one a replica
// stored in Redis. Any failure to read Redis, and any value refused, is a
// miss.
func (c *Verdicts) Get(key string) (verify.Verdict, bool) {
	if v, ok := c.l1.Get(key); ok {
		return v, true
	}
	now := c.now()
	c.mu.Lock()
	r, ok := c.remote.Get(key)
	if ok && !now.Before(r.expires) {
		c.remote.Remove(key)
		ok = false
	}
	c.mu.Unlock()
	if ok {
		return r.v, true
	}
	v, expires, ok := c.fetch(key, now)
	if !ok {
		return verify.Verdict{}, false
	}
	c.keepRemote(key, v, expires)
	return v, true
}

// GetLocal is Get from this replica's memory alone (its own verdicts and
// the copies it read from Redis), without asking Redis: the proxy uses it
// to know, before it waits on Redis, whether it will.
func (c *Verdicts) GetLocal(key string) (verify.Verdict, bool) {
	if v, ok := c.l1.Get(key); ok {
		return v, true
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.remote.Get(key)
	if !ok || !now.Before(r.expires) {
		return verify.Verdict{}, false
	}
	return r.v, true
}

// GetShared returns the verdict for key as Redis holds it for every
// replica, ignoring this replica's own copies: refresh-ahead uses it to
// see that another replica decided the digest again since. It keeps no
// copy.
func (c *Verdicts) GetShared(key string) (verify.Verdict, bool) {
	v, _, ok := c.fetch(key, c.now())
	return v, ok
}

// fetch reads key's verdict from Redis; a failure, a value refused and an
// expired verdict are misses.
func (c *Verdicts) fetch(key string, now time.Time) (verify.Verdict, time.Time, bool) {
	var raw []byte
	err := c.guard.Do(context.Background(), "verdict_get", func(ctx context.Context) error {
		// GETRANGE bounds what Redis sends, whatever is stored; it reads
		// a missing key as empty, which EXISTS tells from a stored "".
		var get *redis.StringCmd
		var exists *redis.IntCmd
		if _, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.GetRange(ctx, c.prefix+key, 0, int64(c.maxValue))
			exists = p.Exists(ctx, c.prefix+key)
			return nil
		}); err != nil {
			return err
		}
		if exists.Val() == 0 {
			return redis.Nil
		}
		raw = []byte(get.Val())
		return nil
	})
	if err != nil {
		return verify.Verdict{}, time.Time{}, false
	}
	v, expires, err := c.decode(key, raw, now)
	if err != nil {
		c.guard.Invalid("verdict_get", key, err)
		return verify.Verdict{}, time.Time{}, false
	}
	if !now.Before(expires) {
		return verify.Verdict{}, time.Time{}, false
	}
	return v, expires, true
}

// decode parses raw strictly and checks it was written for key. The
// lifetime it claims is cut to the TTL of its kind: a planted value
// cannot outlive what this replica would have cached.
func (c *Verdicts) decode(key string, raw []byte, now time.Time) (verify.Verdict, time.Time, error) {
	if len(raw) > c.maxValue {
		return verify.Verdict{}, time.Time{}, fmt.Errorf("value of %d bytes exceeds the limit of %d", len(raw), c.maxValue)
	}
	var d verdictDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return verify.Verdict{}, time.Time{}, fmt.Errorf("failed to parse verdict: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return verify.Verdict{}, time.Time{}, errors.New("trailing data after the verdict")
	}
	switch {
	case d.V != verdictFormat:
		return verify.Verdict{}, time.Time{}, fmt.Errorf("verdict format %d, want %d", d.V, verdictFormat)
	case d.K != verdictBinding(key):
		return verify.Verdict{}, time.Time{}, errors.New("verdict was stored for another key")
	case d.Verdict == nil:
		return verify.Verdict{}, time.Time{}, errors.New("no verdict")
	case d.Expires <= 0:
		return verify.Verdict{}, time.Time{}, errors.New("no expiry")
	case !d.Verdict.Allowed && len(d.Verdict.Reasons) == 0:
		// A denial always says why (verify.Verdict); one that does not
		// was not written by a proxy.
		return verify.Verdict{}, time.Time{}, errors.New("denial without a reason")
	}
	ttl := c.denyTTL
	if d.Verdict.Allowed {
		ttl = c.allowTTL
	}
	expires := time.UnixMilli(d.Expires)
	if limit := now.Add(ttl); expires.After(limit) {
		expires = limit
	}
	return *d.Verdict, expires, nil
}

// Add stores v locally and in Redis with the lifetime of its kind. When
// Redis fails the verdict is still cached locally.
func (c *Verdicts) Add(key string, v verify.Verdict) {
	c.l1.Add(key, v)
	c.mu.Lock()
	c.remote.Remove(key)
	c.mu.Unlock()
	ttl := c.denyTTL
	if v.Allowed {
		ttl = c.allowTTL
	}
	if ttl <= 0 {
		// Not cached: drop what another replica stored, so the key never
		// answers with something older than the latest decision.
		c.del("verdict_del", c.prefix+key)
		return
	}
	raw, err := json.Marshal(verdictDoc{V: verdictFormat, K: verdictBinding(key), Expires: c.now().Add(ttl).UnixMilli(), Verdict: &v})
	if err != nil || len(raw) > c.maxValue {
		// Too large to share (a long lineage): other replicas verify it
		// themselves; drop an older shared verdict for the key.
		c.del("verdict_del", c.prefix+key)
		return
	}
	_ = c.guard.Do(context.Background(), "verdict_set", func(ctx context.Context) error {
		return c.rdb.Set(ctx, c.prefix+key, raw, ttl).Err()
	})
}

func (c *Verdicts) del(op string, keys ...string) {
	_ = c.guard.Do(context.Background(), op, func(ctx context.Context) error {
		if len(keys) == 1 {
			return c.rdb.Del(ctx, keys[0]).Err()
		}
		// One DEL per key: on a cluster the keys lie in different slots,
		// and a DEL of several keys across slots is refused.
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.Del(ctx, k)
			}
			return nil
		})
		return err
	})
}

// Remove drops key's verdict locally and in Redis. Another replica's
// local copy lives on until it expires.
func (c *Verdicts) Remove(key string) {
	c.l1.Remove(key)
	c.mu.Lock()
	c.remote.Remove(key)
	c.mu.Unlock()
	c.del("verdict_del", c.prefix+key)
}

// RemoveFunc drops every verdict match is true for, locally and in Redis,
// and reports how many it dropped here. Redis is walked with SCAN, on
// every master of a cluster, and each value read (one bounded GETRANGE per
// key, never a multi-key command, so a cluster's slots do not matter) and
// tested; a value that cannot be parsed or bound to its key is deleted too
// (it could never be used). If Redis fails part-way the walk stops: the
// local purge is complete, the shared one best effort (another replica's
// local copies live on until they expire).
func (c *Verdicts) RemoveFunc(match func(verify.Verdict) bool) int {
	n := c.l1.RemoveFunc(match)
	c.mu.Lock()
	for _, k := range c.remote.Keys() {
		if r, ok := c.remote.Peek(k); ok && match(r.v) {
			c.remote.Remove(k)
			n++
		}
	}
	c.mu.Unlock()
	var nodes []redis.UniversalClient
	if err := c.guard.Do(context.Background(), "verdict_scan", func(ctx context.Context) error {
		var err error
		nodes, err = masters(ctx, c.rdb)
		return err
	}); err != nil {
		return n
	}
	now := c.now()
	for _, node := range nodes {
		if !c.purge(node, match, now) {
			break
		}
	}
	return n
}

// purge walks the verdicts one server holds, deleting those match is true
// for and those refused; false when Redis failed.
func (c *Verdicts) purge(node redis.UniversalClient, match func(verify.Verdict) bool, now time.Time) bool {
	var cursor uint64
	for {
		var keys []string
		err := c.guard.Do(context.Background(), "verdict_scan", func(ctx context.Context) error {
			var err error
			keys, cursor, err = node.Scan(ctx, cursor, c.prefix+"*", removeScanBatch).Result()
			return err
		})
		if err != nil {
			return false
		}
		if len(keys) > 0 {
			vals := make([]*redis.StringCmd, len(keys))
			if err := c.guard.Do(context.Background(), "verdict_scan", func(ctx context.Context) error {
				_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for i, k := range keys {
						vals[i] = p.GetRange(ctx, k, 0, int64(c.maxValue))
					}
					return nil
				})
				return err
			}); err != nil {
				return false
			}
			var drop []string
			for i, k := range keys {
				raw, err := vals[i].Bytes()
				if err != nil || len(raw) == 0 {
					// Gone since the SCAN.
					continue
				}
				v, _, err := c.decode(k[len(c.prefix):], raw, now)
				if err != nil || match(v) {
					drop = append(drop, k)
				}
			}
			if len(drop) > 0 {
				c.del("verdict_del", drop...)
			}
		}
		if cursor == 0 {
			return true
		}
	}
}
