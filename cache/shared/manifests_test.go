package shared

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
)

func testManifest(body string) verify.Manifest {
	b := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":"` + body + `"}`)
	sum := sha256.Sum256(b)
	return verify.Manifest{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, MediaType: types.OCIManifestSchema1, Bytes: b}
}

// newTestManifests is one replica's shared manifest cache on mr, with an
// empty local cache of its own.
func newTestManifests(t *testing.T, mr *miniredis.Miniredis) (*Manifests, *Guard) {
	t.Helper()
	c, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	l1, err := cache.NewManifests(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(zap.NewNop(), nil, 5*time.Second)
	m, err := NewManifests(l1, c, g, ManifestsOptions{KeyPrefix: "p:", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return m, g
}

// awaitKey waits for the background write of key.
func awaitKey(t *testing.T, mr *miniredis.Miniredis, key string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !mr.Exists(key); {
		if time.Now().After(deadline) {
			t.Fatalf("%s never written", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestManifestsShared: bytes one replica added are served by another
// from Redis, exactly, with their TTL, and kept in its own cache.
func TestManifestsShared(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestManifests(t, mr)
	b, _ := newTestManifests(t, mr)
	m := testManifest("one")
	a.Add(m)
	key := "p:v1:manifest:" + m.Digest.String()
	awaitKey(t, mr, key)
	if ttl := mr.TTL(key); ttl <= 0 || ttl > time.Minute {
		t.Errorf("TTL %v, want up to a minute", ttl)
	}
	if _, ok := b.GetLocal(m.Digest.String()); ok {
		t.Fatal("B's local cache has bytes only A added")
	}
	got, ok := b.Get(m.Digest.String())
	if !ok || string(got.Bytes) != string(m.Bytes) || got.MediaType != m.MediaType || got.Digest != m.Digest {
		t.Fatalf("B got %v %+v", ok, got)
	}
	mr.Del(key)
	if _, ok := b.GetLocal(m.Digest.String()); !ok {
		t.Error("B did not keep the bytes it read")
	}
}

// TestManifestsRefused: whatever else Redis holds under a manifest's key
// is a miss and counted, never served: bytes of another manifest, a media
// type the proxy does not serve manifests under, an unknown version,
// extra fields, oversized values.
func TestManifestsRefused(t *testing.T) {
	t.Parallel()
	want := testManifest("wanted")
	other := testManifest("planted")
	doc := func(v int, mt string, b []byte, extra string) string {
		return fmt.Sprintf(`{"v":%d,"mt":%q,"b":%q%s}`, v, mt, base64.StdEncoding.EncodeToString(b), extra)
	}
	for name, value := range map[string]string{
		"bytes of another manifest": doc(1, string(types.OCIManifestSchema1), other.Bytes, ""),
		"not a manifest type":       doc(1, "text/html", want.Bytes, ""),
		"unknown version":           doc(2, string(types.OCIManifestSchema1), want.Bytes, ""),
		"extra field":               doc(1, string(types.OCIManifestSchema1), want.Bytes, `,"allowed":true`),
		"no bytes":                  doc(1, string(types.OCIManifestSchema1), nil, ""),
		"not json":                  "allow",
		"oversized":                 doc(1, string(types.OCIManifestSchema1), want.Bytes, `,"pad":"`+strings.Repeat("x", DefaultMaxValueBytes)+`"`),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			mr := miniredis.RunT(t)
			m, g := newTestManifests(t, mr)
			_ = mr.Set("p:v1:manifest:"+want.Digest.String(), value)
			if got, ok := m.Get(want.Digest.String()); ok {
				t.Fatalf("served %q", got.Bytes)
			}
			if n := testutil.ToFloat64(g.errs.WithLabelValues("manifest_get", "invalid")); n != 1 {
				t.Errorf("invalid counted %v times, want 1", n)
			}
		})
	}
}

// TestManifestsRedisDown: a failure is a miss (the proxy fetches upstream)
// and adding still caches locally.
func TestManifestsRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	m, _ := newTestManifests(t, mr)
	redistest.Down(t, mr)
	one := testManifest("down")
	if _, ok := m.Get(one.Digest.String()); ok {
		t.Fatal("a lookup with Redis down found bytes")
	}
	m.Add(one)
	if got, ok := m.Get(one.Digest.String()); !ok || string(got.Bytes) != string(one.Bytes) {
		t.Error("added bytes not kept locally with Redis down")
	}
}

// TestManifestsNotWritten: bytes that do not hash to their digest, or
// that would not fit the value bound, are not written to Redis.
func TestManifestsNotWritten(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	m, _ := newTestManifests(t, mr)
	bad := testManifest("x")
	bad.Bytes = []byte(`{"tampered":true}`)
	m.Add(bad)
	big := testManifest(strings.Repeat("y", DefaultMaxValueBytes))
	m.Add(big)
	ok := testManifest("fits")
	m.Add(ok)
	awaitKey(t, mr, "p:v1:manifest:"+ok.Digest.String())
	for _, d := range []v1.Hash{bad.Digest, big.Digest} {
		if mr.Exists("p:v1:manifest:" + d.String()) {
			t.Errorf("%s written", d)
		}
	}
}
