package cache

import (
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unique"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/portcullis-oci/portcullis/verify"
)

// Verdicts is a size-bounded LRU of policy verdicts whose entries expire
// individually: an allow lives for the allow TTL, a denial for the deny TTL.
// It is safe for concurrent use.
//
// It is one simplelru.LRU with the expiry stored in each entry and checked on
// Get, rather than the expirable package. expirable fixes a single TTL per
// cache, so two lifetimes would need two caches: the capacity would have to
// be split between them in advance, a key whose verdict flips from allow to
// deny would live in both at once (and Get would have to pick one), and each
// cache starts a wall-clock cleanup goroutine that never exits (v2.0.7) and
// cannot be driven by a test clock. A single LRU gives one
// hard bound on the number of entries, one entry per key, and a lifetime
// chosen per Add. Expired entries keep their slot until they are read, pruned
// from the cold end on Add, or evicted by newer entries; they are never
// returned.
type Verdicts struct {
	allowTTL, denyTTL time.Duration

	// now is the clock; tests replace it. Expiry is measured as an offset
	// from epoch so that, with the real clock, it follows the monotonic
	// reading and ignores wall-clock steps.
	now   func() time.Time
	epoch time.Time

	mu  sync.Mutex
	lru *simplelru.LRU[string, verdictEntry]
}

// NewVerdicts returns a cache holding at most size verdicts. Allowed
// verdicts are kept for allowTTL and denials for denyTTL; a zero TTL means
// verdicts of that kind are not cached at all.
func NewVerdicts(size int, allowTTL, denyTTL time.Duration) (*Verdicts, error) {
	return newVerdicts(size, allowTTL, denyTTL, time.Now)
}

func newVerdicts(size int, allowTTL, denyTTL time.Duration, now func() time.Time) (*Verdicts, error) {
	if allowTTL < 0 || denyTTL < 0 {
		return nil, fmt.Errorf("verdict cache TTLs must not be negative, got allow %v, deny %v", allowTTL, denyTTL)
	}
	// simplelru refuses a size below one; that is the only check of it.
	lru, err := simplelru.NewLRU[string, verdictEntry](size, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to create verdict cache of size %d: %w", size, err)
	}
	return &Verdicts{
		allowTTL: allowTTL,
		denyTTL:  denyTTL,
		now:      now,
		epoch:    now(),
		lru:      lru,
	}, nil
}

// Get returns the verdict stored under key if it has not expired.
//
// Signers and Attestations of the result are the caller's own. Its Reasons
// and Lineage (and any other slice the cache keeps verbatim) share storage
// with the cache and must not be modified; appending to them is safe.
func (c *Verdicts) Get(key string) (verify.Verdict, bool) {
	now := c.clock()
	c.mu.Lock()
	e, ok := c.lru.Get(key)
	if ok && now >= e.expires {
		// Removing under the same lock as the lookup guarantees that a
		// fresh verdict added concurrently for this key is not the one
		// removed.
		c.lru.Remove(key)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return verify.Verdict{}, false
	}
	return e.verdict(), true
}

// Add stores v under key, replacing any previous verdict for key. Its
// lifetime is the allow TTL when v.Allowed, else the deny TTL.
//
// The cache keeps v's Reasons, Lineage and any other slice it cannot
// compact; the caller must not modify them afterwards.
func (c *Verdicts) Add(key string, v verify.Verdict) {
	ttl := c.denyTTL
	if v.Allowed {
		ttl = c.allowTTL
	}
	if ttl <= 0 {
		// Not cached: also drop a previous verdict so that a key never
		// answers with something older than the latest decision.
		c.mu.Lock()
		c.lru.Remove(key)
		c.mu.Unlock()
		return
	}
	// Compaction (hashing into the intern tables) happens outside the lock.
	now := c.clock()
	e := compactVerdict(v, now+int64(ttl))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneExpired(now)
	c.lru.Add(key, e)
}

// pruneExpired drops a few expired entries from the cold end so that
// expired verdicts do not linger until they are pushed out. The bound keeps
// Add constant-time; entries further in are reclaimed by later calls or
// by eviction. Callers hold c.mu.
func (c *Verdicts) pruneExpired(now int64) {
	const maxPrune = 2
	for range maxPrune {
		_, e, ok := c.lru.GetOldest()
		if !ok || now < e.expires {
			return
		}
		c.lru.RemoveOldest()
	}
}

// Len reports the number of entries held, including expired ones that have
// not been reclaimed yet.
func (c *Verdicts) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Purge removes every entry, e.g. after the policy or trust material changed.
func (c *Verdicts) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
}

// Remove drops the verdict stored under key, if any.
func (c *Verdicts) Remove(key string) {
	c.mu.Lock()
	c.lru.Remove(key)
	c.mu.Unlock()
}

// RemoveFunc drops every verdict match returns true for and reports how
// many it dropped. It holds the cache for one pass over every entry, so it
// is for rare events (a revocation), not the request path.
func (c *Verdicts) RemoveFunc(match func(verify.Verdict) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.lru.Keys() {
		e, ok := c.lru.Peek(k)
		if ok && match(e.verdict()) {
			c.lru.Remove(k)
			n++
		}
	}
	return n
}

func (c *Verdicts) clock() int64 { return int64(c.now().Sub(c.epoch)) }

// verdictEntry is the stored form of a verify.Verdict. A proxy keeps on the
// order of 10^5 verdicts, almost all of which repeat the same boundary,
// mode, artifact kind and signer and differ only in digest and time, so the
// repeated values are interned with the unique package (the intern tables
// are weak: a value nobody references any more is collected) and a sha256
// digest is held as its 32 raw bytes. Everything that is uncommon lives
// behind extra.
type verdictEntry struct {
	expires   int64 // clock offset at which the entry expires
	checkedAt time.Time
	sum       [sha256Size]byte // digest when flagSHA256 is set
	labels    unique.Handle[verdictLabels]
	signer    unique.Handle[verify.Signer] // first signer when flagSigner is set
	extra     *verdictExtra
	flags     uint8
}

// verdictLabels are the fields a boundary's verdicts share.
type verdictLabels struct {
	boundary string
	mode     verify.Mode
	artifact string
}

const (
	flagAllowed uint8 = 1 << iota
	flagSHA256
	flagSigner
)

// verdictExtra holds the parts of a verdict that are absent from the
// common case.
type verdictExtra struct {
	moreSigners  []unique.Handle[verify.Signer]
	attestations []attestationEntry
	reasons      []string
	lineage      []verify.Dependency
	// rest is the verdict with every field held in compact form zeroed,
	// when anything is left: a digest that is not sha256, an empty but
	// non-nil list of signers or attestations, an attestation that does not
	// survive compaction, and any field Verdict gains later. A field is
	// therefore kept verbatim unless this file knows how to hold it, never
	// dropped.
	rest *verify.Verdict
}

// attestationEntry is a verify.AttestationResult with its rule, predicate
// type and signer interned: a boundary's verdicts repeat them.
type attestationEntry struct {
	names  unique.Handle[attestationNames]
	signer unique.Handle[verify.Signer]
	time   time.Time
}

type attestationNames struct{ rule, predicateType, name string }

func compactAttestation(a verify.AttestationResult) attestationEntry {
	return attestationEntry{
		names:  unique.Make(attestationNames{a.Rule, a.PredicateType, a.Name}),
		signer: unique.Make(a.Signer),
		time:   a.Time,
	}
}

// compactAttestations reports false when an attestation would not come
// back unchanged: a field of AttestationResult this file does not know of.
// The caller then keeps the list verbatim.
func compactAttestations(as []verify.AttestationResult) ([]attestationEntry, bool) {
	if len(as) == 0 {
		// nil and empty are told apart by keeping them verbatim.
		return nil, false
	}
	es := make([]attestationEntry, len(as))
	for i, a := range as {
		es[i] = compactAttestation(a)
		if es[i].result() != a {
			return nil, false
		}
	}
	return es, true
}

func (a attestationEntry) result() verify.AttestationResult {
	n := a.names.Value()
	return verify.AttestationResult{Rule: n.rule, PredicateType: n.predicateType, Name: n.name, Signer: a.signer.Value(), Time: a.time}
}

const (
	sha256Size   = 32
	sha256Prefix = "sha256:"
)

func compactVerdict(v verify.Verdict, expires int64) verdictEntry {
	e := verdictEntry{
		expires:   expires,
		checkedAt: v.CheckedAt,
		labels:    unique.Make(verdictLabels{v.Boundary, v.Mode, v.Artifact}),
	}
	// rest starts as the whole verdict; each field moved into the compact
	// form is zeroed in it.
	rest := v
	rest.Allowed, rest.Mode, rest.Boundary, rest.Artifact, rest.CheckedAt = false, "", "", "", time.Time{}
	if v.Allowed {
		e.flags |= flagAllowed
	}
	if sum, ok := parseSHA256(v.Digest); ok {
		e.sum = sum
		e.flags |= flagSHA256
		rest.Digest = ""
	}
	// Signers and attestations come back from their compact form as new
	// slices, so an empty but non-nil list stays in rest to keep it so.
	var x verdictExtra
	if len(v.Signers) > 0 {
		rest.Signers = nil
		e.signer = unique.Make(v.Signers[0])
		e.flags |= flagSigner
		tail := v.Signers[1:]
		// Grow leaves moreSigners nil for a single signer.
		x.moreSigners = slices.Grow(x.moreSigners, len(tail))
		for _, s := range tail {
			x.moreSigners = append(x.moreSigners, unique.Make(s))
		}
	}
	if as, ok := compactAttestations(v.Attestations); ok {
		x.attestations, rest.Attestations = as, nil
	}
	// Reasons and Lineage are kept as given, nil or empty alike, but
	// clipped: a caller appending to a slice it got back must not write into
	// the storage another caller's copy shares.
	x.reasons, rest.Reasons = slices.Clip(v.Reasons), nil
	x.lineage, rest.Lineage = slices.Clip(v.Lineage), nil
	if !reflect.ValueOf(&rest).Elem().IsZero() {
		rest.Attestations = slices.Clip(rest.Attestations)
		x.rest = &rest
	}
	if x.moreSigners != nil || x.attestations != nil || x.reasons != nil || x.lineage != nil || x.rest != nil {
		e.extra = &x
	}
	return e
}

func (e *verdictEntry) verdict() verify.Verdict {
	var v verify.Verdict
	x := e.extra
	if x != nil && x.rest != nil {
		v = *x.rest
	}
	v.Allowed = e.flags&flagAllowed != 0
	l := e.labels.Value()
	v.Mode, v.Boundary, v.Artifact = l.mode, l.boundary, l.artifact
	v.CheckedAt = e.checkedAt
	if e.flags&flagSHA256 != 0 {
		v.Digest = formatSHA256(e.sum)
	}
	if e.flags&flagSigner != 0 {
		n := 1
		if x != nil {
			n += len(x.moreSigners)
		}
		v.Signers = make([]verify.Signer, 0, n)
		v.Signers = append(v.Signers, e.signer.Value())
		if x != nil {
			for _, h := range x.moreSigners {
				v.Signers = append(v.Signers, h.Value())
			}
		}
	}
	if x == nil {
		return v
	}
	if x.attestations != nil {
		v.Attestations = make([]verify.AttestationResult, len(x.attestations))
		for i, a := range x.attestations {
			v.Attestations[i] = a.result()
		}
	}
	v.Reasons, v.Lineage = x.reasons, x.lineage
	return v
}

// parseSHA256 returns the raw bytes of d when formatSHA256 spells them back
// as exactly d: "sha256:" and 64 lowercase hex digits. Any other digest
// (upper case, another length or algorithm) is kept verbatim by the caller,
// so that Get returns the string it was given. The round trip is the whole
// test, so nothing it accepts can come back different.
func parseSHA256(d string) ([sha256Size]byte, bool) {
	var sum [sha256Size]byte
	h := strings.TrimPrefix(d, sha256Prefix)
	// The error is not needed: decoding stops at the first byte that is not
	// hex, and anything longer than a sha256 is cut to one; either way the
	// bytes decoded no longer spell d.
	hex.Decode(sum[:], []byte(h[:min(len(h), hex.EncodedLen(sha256Size))]))
	enc := encodeSHA256(sum)
	return sum, string(enc[:]) == d
}

func formatSHA256(sum [sha256Size]byte) string {
	b := encodeSHA256(sum)
	return string(b[:])
}

func encodeSHA256(sum [sha256Size]byte) [len(sha256Prefix) + 2*sha256Size]byte {
	var b [len(sha256Prefix) + 2*sha256Size]byte
	copy(b[:], sha256Prefix)
	hex.Encode(b[len(sha256Prefix):], sum[:])
	return b
}
