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
	if size <= 0 {
		return nil, fmt.Errorf("verdict cache size must be positive, got %d", size)
	}
	if allowTTL < 0 || denyTTL < 0 {
		return nil, fmt.Errorf("verdict cache TTLs must not be negative, got allow %v, deny %v", allowTTL, denyTTL)
	}
	lru, err := simplelru.NewLRU[string, verdictEntry](size, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to create verdict cache: %w", err)
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
// The Reasons and Lineage of the result (and any other slice the cache
// keeps verbatim) share storage with the cache and must not be modified.
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

func (c *Verdicts) clock() int64 { return int64(c.now().Sub(c.epoch)) }

// verdictEntry is the stored form of a verify.Verdict. A proxy keeps on the
// order of 10^5 verdicts, almost all of which repeat the same boundary,
// mode and signer and differ only in digest and time, so the repeated
// values are interned with the unique package (the intern tables are weak:
// a value nobody references any more is collected) and a sha256 digest is
// held as its 32 raw bytes. Everything that is uncommon lives behind extra.
type verdictEntry struct {
	expires   int64 // clock offset at which the entry expires
	checkedAt time.Time
	sum       [sha256Size]byte // digest when flagSHA256 is set
	boundary  unique.Handle[string]
	mode      unique.Handle[verify.Mode]
	signer    unique.Handle[verify.Signer] // first signer when flagSigner is set
	extra     *verdictExtra
	flags     uint8
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
	artifact     unique.Handle[string] // zero when the verdict has none
	// rest is the verdict with every field held in compact form zeroed,
	// when anything is left: a digest that is not sha256, an empty but
	// non-nil slice, an attestation that does not survive compaction, and
	// any field Verdict gains later. A field is therefore kept verbatim
	// unless this file knows how to hold it, never dropped.
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
		boundary:  unique.Make(v.Boundary),
		mode:      unique.Make(v.Mode),
	}
	// rest starts as the whole verdict; each field moved into the compact
	// form is zeroed in it.
	rest := v
	rest.Allowed, rest.Mode, rest.Boundary, rest.CheckedAt = false, "", "", time.Time{}
	if v.Allowed {
		e.flags |= flagAllowed
	}
	if sum, ok := parseSHA256(v.Digest); ok {
		e.sum = sum
		e.flags |= flagSHA256
		rest.Digest = ""
	}
	// Empty slices stay in rest, so that nil and empty come back as given.
	var x verdictExtra
	if len(v.Signers) > 0 {
		rest.Signers = nil
		e.signer = unique.Make(v.Signers[0])
		e.flags |= flagSigner
		if tail := v.Signers[1:]; len(tail) > 0 {
			x.moreSigners = make([]unique.Handle[verify.Signer], len(tail))
			for i, s := range tail {
				x.moreSigners[i] = unique.Make(s)
			}
		}
	}
	if len(v.Attestations) > 0 {
		x.attestations = make([]attestationEntry, len(v.Attestations))
		for i, a := range v.Attestations {
			x.attestations[i] = compactAttestation(a)
			// A field of AttestationResult this file does not know of
			// would not survive; such a list is kept verbatim instead.
			if x.attestations[i].result() != a {
				x.attestations = nil
				break
			}
		}
		if x.attestations != nil {
			rest.Attestations = nil
		}
	}
	// A caller appending to a slice it got back must not write into the
	// cache's storage.
	if len(v.Reasons) > 0 {
		x.reasons, rest.Reasons = slices.Clip(v.Reasons), nil
	}
	if len(v.Lineage) > 0 {
		x.lineage, rest.Lineage = slices.Clip(v.Lineage), nil
	}
	if v.Artifact != "" {
		x.artifact, rest.Artifact = unique.Make(v.Artifact), ""
	}
	if !reflect.ValueOf(&rest).Elem().IsZero() {
		rest.Attestations = slices.Clip(rest.Attestations)
		x.rest = &rest
	}
	if x.moreSigners != nil || x.attestations != nil || x.reasons != nil || x.lineage != nil ||
		x.artifact != (unique.Handle[string]{}) || x.rest != nil {
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
	v.Mode = e.mode.Value()
	v.Boundary = e.boundary.Value()
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
	if x.reasons != nil {
		v.Reasons = x.reasons
	}
	if x.lineage != nil {
		v.Lineage = x.lineage
	}
	if x.artifact != (unique.Handle[string]{}) {
		v.Artifact = x.artifact.Value()
	}
	return v
}

// parseSHA256 accepts exactly "sha256:" followed by 64 lowercase hex
// digits, the only spelling formatSHA256 reproduces; anything else is kept
// verbatim so that Get returns the digest string it was given.
func parseSHA256(d string) ([sha256Size]byte, bool) {
	var sum [sha256Size]byte
	h, ok := strings.CutPrefix(d, sha256Prefix)
	if !ok || len(h) != 2*sha256Size {
		return sum, false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return sum, false
		}
	}
	if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
		return sum, false
	}
	return sum, true
}

func formatSHA256(sum [sha256Size]byte) string {
	var b [len(sha256Prefix) + 2*sha256Size]byte
	copy(b[:], sha256Prefix)
	hex.Encode(b[len(sha256Prefix):], sum[:])
	return string(b[:])
}
