package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Defaults of the blob_cache and blob_share sections.
const (
	// DefaultBlobCacheMinFreeGiB is the free space the blob cache leaves
	// on its file system.
	DefaultBlobCacheMinFreeGiB = 1.0
	// DefaultBlobCacheSendfile is when cached files leave with
	// sendfile(2).
	DefaultBlobCacheSendfile = "auto"
	// DefaultBlobShareBufferBytes is how far apart the readers of one
	// shared fetch held in memory may be.
	DefaultBlobShareBufferBytes ByteSize = 8 << 20
	// DefaultBlobShareMaxBytes bounds the memory of all shared fetches.
	DefaultBlobShareMaxBytes ByteSize = 64 << 20
)

// BlobCache, when present, keeps verified blobs as files in Dir, so that
// a blob already pulled costs no upstream request. Blob gating still
// decides who may read each one.
type BlobCache struct {
	// Dir holds the cache, relative to this file. Required. It must be
	// writable by the proxy alone.
	Dir string `yaml:"dir"`
	// MaxGiB bounds the cached files (GiB, may be fractional). Required.
	MaxGiB GiB `yaml:"max_gib"`
	// MinFreeGiB is the free space left on Dir's file system (default 1);
	// files are evicted rather than go below it.
	MinFreeGiB *GiB `yaml:"min_free_gib"`
	// Sendfile says to which plain-HTTP clients cached files are sent
	// with sendfile(2): "auto" (the default: clients on another host; a
	// client on a loopback address is sent a copy, which it reads faster
	// when it hashes what it reads), "always" (least proxy CPU) or
	// "never".
	Sendfile string `yaml:"sendfile"`
}

// MaxBytes is MaxGiB in bytes.
func (b *BlobCache) MaxBytes() int64 { return gibBytes(b.MaxGiB) }

// MinFreeBytes is MinFreeGiB in bytes (the default before defaults are
// applied).
func (b *BlobCache) MinFreeBytes() int64 {
	if b.MinFreeGiB == nil {
		return gibBytes(DefaultBlobCacheMinFreeGiB)
	}
	return gibBytes(*b.MinFreeGiB)
}

func gibBytes(g GiB) int64 { return int64(math.Round(float64(g) * (1 << 30))) }

// GiB is a number of GiB, possibly fractional ("0.5"), 0 or more.
type GiB float64

// UnmarshalYAML accepts a non-negative YAML number.
func (g *GiB) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") {
		return errors.New("must be a number of GiB")
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
	if err != nil || !(v >= 0 && v <= maxBlobCacheGiB) {
		return fmt.Errorf("must be a number of GiB from 0 to %d, not %s", maxBlobCacheGiB, n.Value)
	}
	*g = GiB(v)
	return nil
}

// BlobShare bounds the memory with which concurrent pulls of one blob
// share one upstream fetch when it does not go to the blob cache.
type BlobShare struct {
	// Disabled has every pull fetch on its own.
	Disabled bool `yaml:"disabled"`
	// BufferBytes is how far the fastest reader of a fetch may run ahead
	// of the slowest (default 8MiB); beyond it the fetch waits, and drops
	// a reader that took nothing for limits.client_stall_grace.
	BufferBytes ByteSize `yaml:"buffer_bytes"`
	// MaxBytes bounds the buffers of all fetches together (default
	// 64MiB); each fetch may hold 1MiB beyond it.
	MaxBytes ByteSize `yaml:"max_bytes"`
}

func (b *BlobCache) applyDefaults() {
	if b == nil {
		return
	}
	if b.MinFreeGiB == nil {
		v := GiB(DefaultBlobCacheMinFreeGiB)
		b.MinFreeGiB = &v
	}
	if b.Sendfile == "" {
		b.Sendfile = DefaultBlobCacheSendfile
	}
}

func (b *BlobShare) applyDefaults() {
	if b.BufferBytes == 0 {
		b.BufferBytes = DefaultBlobShareBufferBytes
	}
	if b.MaxBytes == 0 {
		b.MaxBytes = DefaultBlobShareMaxBytes
	}
}

// maxBlobCacheGiB keeps sizes far from overflowing int64 bytes.
const maxBlobCacheGiB = 1 << 30

func (b *BlobCache) validate(r *reporter) {
	if b.Dir == "" {
		r.addf("blob_cache.dir", "is required: the directory holding cached blobs")
	}
	if !(b.MaxGiB > 0 && b.MaxGiB <= maxBlobCacheGiB) || b.MaxBytes() < 1 {
		r.addf("blob_cache.max_gib", "must be a number of GiB above 0 (it bounds the cached files)")
	}
	if b.MinFreeGiB != nil && !(*b.MinFreeGiB >= 0 && *b.MinFreeGiB <= maxBlobCacheGiB) {
		r.addf("blob_cache.min_free_gib", "must be a number of GiB, 0 or more")
	}
	switch b.Sendfile {
	case "", "auto", "always", "never":
	default:
		r.addf("blob_cache.sendfile", "must be auto, always or never, not %q", b.Sendfile)
	}
}

func (b *BlobShare) validate(r *reporter) {
	if b.BufferBytes < 1<<20 {
		r.addf("blob_share.buffer_bytes", "must be at least 1MiB (use disabled: true to turn sharing off)")
	}
	if b.MaxBytes < b.BufferBytes {
		r.addf("blob_share.max_bytes", "must be at least buffer_bytes")
	}
}
