package shared

import (
	"context"
	"errors"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/redis/go-redis/v9"

	"github.com/portcullis-oci/portcullis/verify"
)

// ReadBytesWith has GetAlong read manifest bytes into m, which must use the
// same Redis client as c.
func (c *Verdicts) ReadBytesWith(m *Manifests) error {
	if m == nil || m.rdb != c.rdb {
		return errors.New("the manifest cache does not share the verdict cache's Redis client")
	}
	c.along = m
	return nil
}

// GetAlong is Get for a manifest verdict whose bytes the caller will also
// need: on a local miss, the verdict and the manifest bytes under digest
// are read in one pipeline, one round trip instead of two in a row. Bytes
// that decode and hash to digest are kept in the local cache of the
// Manifests given to ReadBytesWith, where the caller's next Get finds
// them; anything else about them is ignored here and, as in Get, reported
// as invalid. The verdict is read and refused exactly as Get does. With
// digest "" (bytes in hand), or bytes already held here, only the verdict
// is read. shared says the verdict came from Redis.
func (c *Verdicts) GetAlong(key, digest string) (v verify.Verdict, ok, shared bool) {
	if v, ok := c.GetLocal(key); ok {
		return v, true, false
	}
	m := c.along
	want, err := v1.NewHash(digest)
	if m == nil || err != nil || want.Algorithm != "sha256" {
		v, ok = c.Get(key)
		return v, ok, ok
	}
	if _, have := m.GetLocal(digest); have {
		v, ok = c.Get(key)
		return v, ok, ok
	}
	now := c.now()
	var vcmd, mcmd *redis.StringCmd
	err = c.guard.Do(context.Background(), "verdict_get", func(ctx context.Context) error {
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			// GETRANGE bounds what Redis sends, whatever is stored; a
			// missing key reads as empty, which no proxy stores.
			vcmd = p.GetRange(ctx, c.prefix+key, 0, int64(c.maxValue))
			mcmd = p.GetRange(ctx, m.prefix+digest, 0, int64(m.maxValue))
			return nil
		})
		return err
	})
	if err != nil {
		return verify.Verdict{}, false, false
	}
	if raw := []byte(mcmd.Val()); len(raw) > 0 {
		if got, derr := m.decode(raw, want); derr != nil {
			m.guard.Invalid("manifest_get", digest, derr)
		} else {
			m.l1.Add(got)
		}
	}
	raw := []byte(vcmd.Val())
	if len(raw) == 0 {
		return verify.Verdict{}, false, false
	}
	v, expires, err := c.decode(key, raw, now)
	if err != nil {
		c.guard.Invalid("verdict_get", key, err)
		return verify.Verdict{}, false, false
	}
	if !now.Before(expires) {
		return verify.Verdict{}, false, false
	}
	c.keepRemote(key, v, expires)
	return v, true, true
}

// keepRemote keeps a verdict read from Redis for the lifetime it has left.
func (c *Verdicts) keepRemote(key string, v verify.Verdict, expires time.Time) {
	c.mu.Lock()
	c.remote.Add(key, remoteVerdict{v: v, expires: expires})
	c.mu.Unlock()
}
