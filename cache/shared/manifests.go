package shared

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/redis/go-redis/v9"

	"github.com/portcullis-oci/portcullis/verify"
)

// ManifestCache is the in-process cache of verified manifest bytes that
// Manifests puts in front of Redis; cache.Manifests satisfies it (the
// proxy's ManifestCache).
type ManifestCache interface {
	Get(digest string) (verify.Manifest, bool)
	Add(m verify.Manifest)
}

const (
	manifestFormat = 1
	// manifestWriters bounds the writes to Redis in flight; a write that
	// finds no room is dropped (the bytes stay local, another replica
	// fetches them upstream).
	manifestWriters = 64
)

// sharedManifestTypes are the media types a manifest read from Redis may
// carry: the ones the proxy serves manifests under.
var sharedManifestTypes = map[types.MediaType]bool{
	types.OCIManifestSchema1:    true,
	types.OCIImageIndex:         true,
	types.DockerManifestSchema2: true,
	types.DockerManifestList:    true,
}

// Manifests shares verified manifest bytes between replicas, so a replica
// that takes a verdict another replica decided (Verdicts) also serves its
// manifest without an upstream request: a verdict alone would still cost
// every replica one fetch of the bytes.
//
// The bytes are content-addressed: a value is taken only when its bytes
// hash to the digest it is read for, so whoever writes to Redis can at
// most store a real manifest under its own digest, which is then served
// only where a verdict for that digest allows it. The media type stored
// next to the bytes is limited to the manifest types the proxy serves; a
// wrong one makes clients fail to parse the manifest, nothing more.
type Manifests struct {
	l1       ManifestCache
	rdb      redis.UniversalClient
	guard    *Guard
	prefix   string // <key_prefix>v1:manifest:
	ttl      time.Duration
	maxValue int
	slots    chan struct{}
}

// ManifestsOptions configures NewManifests.
type ManifestsOptions struct {
	// KeyPrefix starts every key (DefaultKeyPrefix when empty).
	KeyPrefix string
	// TTL is how long bytes stay in Redis after their last write; the
	// proxies use the allow TTL, since bytes serve only with a verdict.
	TTL time.Duration
	// MaxValueBytes bounds a stored value (DefaultMaxValueBytes when
	// zero). A manifest whose value is larger stays local.
	MaxValueBytes int
}

// manifestValue is the stored document. B holds the exact bytes (base64
// through encoding/json).
type manifestValue struct {
	V  int             `json:"v"`
	MT types.MediaType `json:"mt"`
	B  []byte          `json:"b"`
}

// NewManifests puts Redis behind l1; guard bounds and accounts every call.
func NewManifests(l1 ManifestCache, rdb redis.UniversalClient, guard *Guard, o ManifestsOptions) (*Manifests, error) {
	if l1 == nil || rdb == nil || guard == nil {
		return nil, errors.New("shared manifests need a local cache, a redis client and a guard")
	}
	if o.TTL <= 0 {
		return nil, fmt.Errorf("shared manifests need a positive TTL, got %v", o.TTL)
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	guard.Seed("manifest_get", "manifest_set")
	return &Manifests{
		l1: l1, rdb: rdb, guard: guard, prefix: o.KeyPrefix + "v1:manifest:",
		ttl: o.TTL, maxValue: o.MaxValueBytes, slots: make(chan struct{}, manifestWriters),
	}, nil
}

// Get returns the manifest with the given digest from this replica's
// cache, else from Redis once its bytes hash to digest. A failure or a
// refused value is a miss: the proxy fetches the bytes upstream.
func (m *Manifests) Get(digest string) (verify.Manifest, bool) {
	if got, ok := m.l1.Get(digest); ok {
		return got, true
	}
	want, err := v1.NewHash(digest)
	if err != nil || want.Algorithm != "sha256" {
		return verify.Manifest{}, false
	}
	var raw []byte
	err = m.guard.Do(context.Background(), "manifest_get", func(ctx context.Context) error {
		// GETRANGE bounds what Redis sends, whatever is stored.
		b, err := m.rdb.GetRange(ctx, m.prefix+digest, 0, int64(m.maxValue)).Bytes()
		raw = b
		return err
	})
	if err != nil || len(raw) == 0 {
		return verify.Manifest{}, false
	}
	got, err := m.decode(raw, want)
	if err != nil {
		m.guard.Invalid("manifest_get", digest, err)
		return verify.Manifest{}, false
	}
	m.l1.Add(got)
	return got, true
}

// GetLocal is Get from this replica's cache alone, without Redis: for a
// caller that only wants to know whether the bytes are in hand.
func (m *Manifests) GetLocal(digest string) (verify.Manifest, bool) {
	return m.l1.Get(digest)
}

func (m *Manifests) decode(raw []byte, want v1.Hash) (verify.Manifest, error) {
	if len(raw) > m.maxValue {
		return verify.Manifest{}, fmt.Errorf("value over %d bytes", m.maxValue)
	}
	var v manifestValue
	if err := strictDecode(raw, &v); err != nil {
		return verify.Manifest{}, err
	}
	switch {
	case v.V != manifestFormat:
		return verify.Manifest{}, fmt.Errorf("unknown version %d", v.V)
	case !sharedManifestTypes[v.MT]:
		return verify.Manifest{}, fmt.Errorf("media type %q is not a manifest type", v.MT)
	case len(v.B) == 0:
		return verify.Manifest{}, errors.New("no bytes")
	}
	sum := sha256.Sum256(v.B)
	if hex.EncodeToString(sum[:]) != want.Hex {
		return verify.Manifest{}, errors.New("bytes do not hash to the digest")
	}
	return verify.Manifest{Digest: want, MediaType: v.MT, Bytes: v.B}, nil
}

// Add caches got locally and writes it to Redis in the background, unless
// its value would exceed the bound or as many writes are in flight as
// there are slots.
func (m *Manifests) Add(got verify.Manifest) {
	m.l1.Add(got)
	if got.Digest.Algorithm != "sha256" || !sharedManifestTypes[got.MediaType] || len(got.Bytes) == 0 {
		return
	}
	sum := sha256.Sum256(got.Bytes)
	if hex.EncodeToString(sum[:]) != got.Digest.Hex {
		return
	}
	// base64 grows the bytes by a third; most manifests are a few KiB.
	if len(got.Bytes)*4/3+len(got.MediaType)+32 > m.maxValue {
		return
	}
	val, err := json.Marshal(manifestValue{V: manifestFormat, MT: got.MediaType, B: got.Bytes})
	if err != nil || len(val) > m.maxValue {
		return
	}
	select {
	case m.slots <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-m.slots }()
		_ = m.guard.Do(context.Background(), "manifest_set", func(ctx context.Context) error {
			return m.rdb.Set(ctx, m.prefix+got.Digest.String(), val, m.ttl).Err()
		})
	}()
}
