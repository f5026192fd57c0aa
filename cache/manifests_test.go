package cache_test

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/verify"
)

// manifest returns a valid manifest of exactly size bytes.
func manifest(t testing.TB, name string, size int) verify.Manifest {
	t.Helper()
	b := []byte(fmt.Sprintf(`{"schemaVersion":2,"annotations":{"name":%q,"pad":""}}`, name))
	if len(b) > size {
		t.Fatalf("manifest %q needs at least %d bytes", name, len(b))
	}
	b = []byte(fmt.Sprintf(`{"schemaVersion":2,"annotations":{"name":%q,"pad":%q}}`, name, strings.Repeat("x", size-len(b))))
	sum := sha256.Sum256(b)
	return verify.Manifest{
		Digest:    v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])},
		MediaType: types.OCIManifestSchema1,
		Bytes:     b,
	}
}

func newManifests(t *testing.T, maxBytes int64) *cache.Manifests {
	t.Helper()
	c, err := cache.NewManifests(maxBytes)
	if err != nil {
		t.Fatalf("NewManifests: %v", err)
	}
	return c
}

func TestNewManifestsRejectsBadBudget(t *testing.T) {
	t.Parallel()
	for _, n := range []int64{0, -1} {
		if c, err := cache.NewManifests(n); err == nil {
			t.Errorf("NewManifests(%d) = %v, want error", n, c)
		}
	}
}

func TestManifestsGetAdd(t *testing.T) {
	t.Parallel()
	c := newManifests(t, 1<<20)
	m := manifest(t, "a", 500)
	if _, ok := c.Get(m.Digest.String()); ok {
		t.Fatal("Get on an empty cache found an entry")
	}
	c.Add(m)
	got, ok := c.Get(m.Digest.String())
	if !ok {
		t.Fatal("manifest not cached")
	}
	if got.Digest != m.Digest || got.MediaType != m.MediaType || string(got.Bytes) != string(m.Bytes) {
		t.Fatalf("Get = %+v, want %+v", got, m)
	}
	if want := int64(500 + cache.ManifestEntryOverhead); c.Bytes() != want {
		t.Errorf("Bytes = %d, want %d", c.Bytes(), want)
	}
	// Re-adding the same content must not count it twice.
	c.Add(m)
	if want := int64(500 + cache.ManifestEntryOverhead); c.Bytes() != want || c.Len() != 1 {
		t.Errorf("after re-Add: Bytes = %d, Len = %d; want %d, 1", c.Bytes(), c.Len(), want)
	}
}

func TestManifestsByteBudgetEvictsLRU(t *testing.T) {
	t.Parallel()
	const size = 1000
	cost := int64(size + cache.ManifestEntryOverhead)
	c := newManifests(t, 3*cost)
	a, b, cc, d := manifest(t, "a", size), manifest(t, "b", size), manifest(t, "c", size), manifest(t, "d", size)
	c.Add(a)
	c.Add(b)
	c.Add(cc)
	if c.Len() != 3 || c.Bytes() != 3*cost {
		t.Fatalf("Len, Bytes = %d, %d; want 3, %d", c.Len(), c.Bytes(), 3*cost)
	}
	// Reading a makes b the least recently used.
	if _, ok := c.Get(a.Digest.String()); !ok {
		t.Fatal("a missing")
	}
	c.Add(d)
	if _, ok := c.Get(b.Digest.String()); ok {
		t.Error("b should have been evicted as least recently used")
	}
	for _, m := range []verify.Manifest{a, cc, d} {
		if _, ok := c.Get(m.Digest.String()); !ok {
			t.Errorf("%s evicted, want kept", m.Digest)
		}
	}
	if c.Bytes() != 3*cost {
		t.Errorf("Bytes = %d, want %d", c.Bytes(), 3*cost)
	}

	// A large manifest evicts as many old ones as it needs.
	big := manifest(t, "big", int(2*cost)+size-cache.ManifestEntryOverhead)
	c.Add(big)
	if c.Len() != 1 {
		t.Fatalf("Len = %d, want only the large manifest", c.Len())
	}
	if _, ok := c.Get(big.Digest.String()); !ok {
		t.Fatal("large manifest within the budget not cached")
	}
	if c.Bytes() > 3*cost {
		t.Fatalf("Bytes = %d exceeds budget %d", c.Bytes(), 3*cost)
	}
}

func TestManifestsOversizedNotCached(t *testing.T) {
	t.Parallel()
	const budget = 4096
	c := newManifests(t, budget)
	fits := manifest(t, "fits", budget-cache.ManifestEntryOverhead)
	c.Add(fits)
	if _, ok := c.Get(fits.Digest.String()); !ok {
		t.Fatal("manifest costing exactly the budget not cached")
	}
	over := manifest(t, "over", budget-cache.ManifestEntryOverhead+1)
	c.Add(over)
	if _, ok := c.Get(over.Digest.String()); ok {
		t.Fatal("manifest over the budget cached")
	}
	// Refusing it must not have evicted what was there.
	if _, ok := c.Get(fits.Digest.String()); !ok {
		t.Fatal("an oversized Add evicted existing content")
	}
}

func TestManifestsRefusesMismatchedContent(t *testing.T) {
	t.Parallel()
	good := manifest(t, "good", 300)
	sum512 := sha512.Sum512(good.Bytes)
	for _, tc := range []struct {
		name   string
		m      verify.Manifest
		cached bool
	}{
		{"sha256", good, true},
		{"sha512", verify.Manifest{Digest: v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(sum512[:])}, Bytes: good.Bytes}, true},
		{"other bytes", verify.Manifest{Digest: good.Digest, Bytes: manifest(t, "evil", 300).Bytes}, false},
		{"uppercase hex", verify.Manifest{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.ToUpper(good.Digest.Hex)}, Bytes: good.Bytes}, false},
		{"unknown algorithm", verify.Manifest{Digest: v1.Hash{Algorithm: "md5", Hex: good.Digest.Hex}, Bytes: good.Bytes}, false},
		{"zero digest", verify.Manifest{Bytes: good.Bytes}, false},
		{"empty bytes", verify.Manifest{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(func() []byte { s := sha256.Sum256(nil); return s[:] }())}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newManifests(t, 1<<20)
			c.Add(tc.m)
			_, ok := c.Get(tc.m.Digest.String())
			if ok != tc.cached {
				t.Fatalf("cached = %v, want %v", ok, tc.cached)
			}
			if !tc.cached && (c.Len() != 0 || c.Bytes() != 0) {
				t.Fatalf("refused manifest left Len %d, Bytes %d", c.Len(), c.Bytes())
			}
		})
	}
}

func TestManifestsPurge(t *testing.T) {
	t.Parallel()
	c := newManifests(t, 1<<20)
	m := manifest(t, "a", 200)
	c.Add(m)
	c.Purge()
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Fatalf("after Purge: Len %d, Bytes %d", c.Len(), c.Bytes())
	}
	if _, ok := c.Get(m.Digest.String()); ok {
		t.Fatal("Get after Purge found an entry")
	}
}

func TestManifestsConcurrent(t *testing.T) {
	t.Parallel()
	ms := make([]verify.Manifest, 40)
	for i := range ms {
		ms[i] = manifest(t, fmt.Sprint(i), 200+10*i)
	}
	budget := int64(10 * (400 + cache.ManifestEntryOverhead))
	c := newManifests(t, budget)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 400 {
				m := ms[(g*7+i)%len(ms)]
				if i%3 == 0 {
					c.Add(m)
				}
				if got, ok := c.Get(m.Digest.String()); ok && string(got.Bytes) != string(m.Bytes) {
					t.Errorf("Get(%s) returned other bytes", m.Digest)
					return
				}
				if i%97 == 0 {
					c.Purge()
				}
				if b := c.Bytes(); b > budget {
					t.Errorf("Bytes = %d exceeds budget %d", b, budget)
					return
				}
			}
		})
	}
	wg.Wait()
}
