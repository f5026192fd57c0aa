package cache_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/verify"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func sha256Digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func allow(digest string) verify.Verdict {
	return verify.Verdict{
		Allowed:  true,
		Mode:     verify.ModeEnforce,
		Boundary: "models",
		Digest:   digest,
		Signers: []verify.Signer{{
			Authority: "release",
			Kind:      "key",
			Key:       "keys/cosign.pub",
			Evidence:  "sigstore-bundle",
		}},
		CheckedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

func deny(digest string) verify.Verdict {
	return verify.Verdict{
		Mode:      verify.ModeEnforce,
		Boundary:  "models",
		Digest:    digest,
		Reasons:   []string{"no valid signature"},
		CheckedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

func newVerdicts(t *testing.T, size int, allowTTL, denyTTL time.Duration) (*cache.Verdicts, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	c, err := cache.NewVerdictsWithClock(size, allowTTL, denyTTL, clk.Now)
	if err != nil {
		t.Fatalf("NewVerdicts: %v", err)
	}
	return c, clk
}

func TestNewVerdictsRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name              string
		size              int
		allowTTL, denyTTL time.Duration
	}{
		{"zero size", 0, time.Minute, time.Second},
		{"negative size", -1, time.Minute, time.Second},
		{"negative allow TTL", 10, -time.Minute, time.Second},
		{"negative deny TTL", 10, time.Minute, -time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if c, err := cache.NewVerdicts(tc.size, tc.allowTTL, tc.denyTTL); err == nil {
				t.Fatalf("NewVerdicts(%d, %v, %v) = %v, want error", tc.size, tc.allowTTL, tc.denyTTL, c)
			}
		})
	}
}

func TestVerdictsPerEntryTTL(t *testing.T) {
	t.Parallel()
	c, clk := newVerdicts(t, 10, 10*time.Minute, 30*time.Second)
	a, d := allow(sha256Digest("a")), deny(sha256Digest("d"))
	c.Add("allowed", a)
	c.Add("denied", d)

	clk.Advance(30*time.Second - time.Nanosecond)
	if _, ok := c.Get("denied"); !ok {
		t.Fatal("denial expired before the deny TTL")
	}
	clk.Advance(time.Nanosecond)
	if v, ok := c.Get("denied"); ok {
		t.Fatalf("denial still cached at the deny TTL: %+v", v)
	}
	if got, ok := c.Get("allowed"); !ok || !reflect.DeepEqual(got, a) {
		t.Fatalf("Get(allowed) = %+v, %v; want %+v, true", got, ok, a)
	}
	if n := c.Len(); n != 1 {
		t.Errorf("Len after reading an expired entry = %d, want 1", n)
	}

	clk.Advance(10*time.Minute - 30*time.Second - time.Nanosecond)
	if _, ok := c.Get("allowed"); !ok {
		t.Fatal("allow expired before the allow TTL")
	}
	clk.Advance(time.Nanosecond)
	if v, ok := c.Get("allowed"); ok {
		t.Fatalf("allow still cached at the allow TTL: %+v", v)
	}
	if n := c.Len(); n != 0 {
		t.Errorf("Len = %d, want 0", n)
	}
}

// A warn-mode denial is served, but it is still a denial and must not get
// the longer allow lifetime.
func TestVerdictsWarnDenialUsesDenyTTL(t *testing.T) {
	t.Parallel()
	c, clk := newVerdicts(t, 10, time.Hour, time.Second)
	v := deny(sha256Digest("w"))
	v.Mode = verify.ModeWarn
	c.Add("k", v)
	clk.Advance(time.Second)
	if _, ok := c.Get("k"); ok {
		t.Fatal("warn-mode denial outlived the deny TTL")
	}
}

func TestVerdictsReplaceTakesNewLifetime(t *testing.T) {
	t.Parallel()
	c, clk := newVerdicts(t, 10, time.Hour, time.Second)
	c.Add("k", allow(sha256Digest("x")))
	d := deny(sha256Digest("x"))
	c.Add("k", d)
	if got, ok := c.Get("k"); !ok || !reflect.DeepEqual(got, d) {
		t.Fatalf("Get = %+v, %v; want the replacing denial", got, ok)
	}
	if n := c.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	clk.Advance(time.Second)
	if got, ok := c.Get("k"); ok {
		t.Fatalf("Get after deny TTL = %+v; the old allow must not resurface", got)
	}
}

func TestVerdictsZeroTTLDisablesKind(t *testing.T) {
	t.Parallel()
	c, _ := newVerdicts(t, 10, time.Hour, 0)
	c.Add("k", allow(sha256Digest("x")))
	c.Add("k", deny(sha256Digest("x")))
	if got, ok := c.Get("k"); ok {
		t.Fatalf("Get = %+v; a denial with zero deny TTL must not be cached nor leave the older allow behind", got)
	}
	c.Add("other", deny(sha256Digest("y")))
	if n := c.Len(); n != 0 {
		t.Fatalf("Len = %d, want 0", n)
	}
}

func TestVerdictsSizeBoundEvictsLRU(t *testing.T) {
	t.Parallel()
	c, _ := newVerdicts(t, 3, time.Hour, time.Hour)
	for _, k := range []string{"a", "b", "c"} {
		c.Add(k, allow(sha256Digest(k)))
	}
	// Reading a makes b the least recently used.
	if _, ok := c.Get("a"); !ok {
		t.Fatal("a missing")
	}
	c.Add("d", allow(sha256Digest("d")))
	if n := c.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
	if _, ok := c.Get("b"); ok {
		t.Error("b should have been evicted as least recently used")
	}
	for _, k := range []string{"a", "c", "d"} {
		if v, ok := c.Get(k); !ok || v.Digest != sha256Digest(k) {
			t.Errorf("Get(%q) = %+v, %v; want its verdict", k, v, ok)
		}
	}
}

func TestVerdictsAddPrunesExpiredColdEntries(t *testing.T) {
	t.Parallel()
	c, clk := newVerdicts(t, 100, time.Hour, time.Second)
	c.Add("d1", deny(sha256Digest("1")))
	c.Add("d2", deny(sha256Digest("2")))
	c.Add("a", allow(sha256Digest("a")))
	clk.Advance(time.Second)
	c.Add("b", allow(sha256Digest("b")))
	if n := c.Len(); n != 2 {
		t.Fatalf("Len = %d, want 2 after the expired denials were pruned", n)
	}
}

func TestVerdictsPurge(t *testing.T) {
	t.Parallel()
	c, _ := newVerdicts(t, 10, time.Hour, time.Hour)
	c.Add("a", allow(sha256Digest("a")))
	c.Add("b", deny(sha256Digest("b")))
	c.Purge()
	if n := c.Len(); n != 0 {
		t.Fatalf("Len after Purge = %d", n)
	}
	if _, ok := c.Get("a"); ok {
		t.Fatal("Get after Purge found an entry")
	}
}

// The stored form is compacted; every verdict must come back exactly as it
// went in.
func TestVerdictsRoundTrip(t *testing.T) {
	t.Parallel()
	full := allow(sha256Digest("full"))
	full.Signers = append(full.Signers,
		verify.Signer{Authority: "ci", Kind: "keyless", Identity: "https://github.com/acme/m/.github/workflows/r.yml@refs/heads/main", Issuer: "https://token.actions.githubusercontent.com", Evidence: "cosign-legacy"},
		verify.Signer{Authority: "ci", Kind: "keyless", Identity: "other", Evidence: "sigstore-bundle"},
	)
	full.Reasons = []string{"legacy signature: wrong key"}
	inner := deny(sha256Digest("dep"))
	full.Lineage = []verify.Dependency{{Name: "dataset", URI: "oci://r/ds@" + sha256Digest("dep"), Verdict: &inner}}

	for _, tc := range []struct {
		name string
		v    verify.Verdict
	}{
		{"allow", allow(sha256Digest("a"))},
		{"deny", deny(sha256Digest("d"))},
		{"full", full},
		{"warn", func() verify.Verdict { v := deny(sha256Digest("w")); v.Mode = verify.ModeWarn; return v }()},
		{"zero", verify.Verdict{}},
		{"uppercase digest", allow("sha256:" + strings.ToUpper(sha256Digest("u")[7:]))},
		{"sha512 digest", allow("sha512:" + strings.Repeat("ab", 64))},
		{"short digest", allow("sha256:abcd")},
		{"no digest", allow("")},
		{"no signers", func() verify.Verdict { v := allow(sha256Digest("n")); v.Signers = nil; return v }()},
		{"local time", func() verify.Verdict {
			v := allow(sha256Digest("t"))
			v.CheckedAt = time.Date(2025, 6, 1, 12, 0, 0, 0, time.FixedZone("X", 3600))
			return v
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := newVerdicts(t, 10, time.Hour, time.Hour)
			c.Add("k", tc.v)
			got, ok := c.Get("k")
			if !ok {
				t.Fatal("verdict not cached")
			}
			if !reflect.DeepEqual(got, tc.v) {
				t.Fatalf("round trip changed the verdict:\n got  %+v\n want %+v", got, tc.v)
			}
		})
	}
}

// Signers are rebuilt on every Get, so a caller changing its copy must not
// change what the next caller sees.
func TestVerdictsGetReturnsIndependentSigners(t *testing.T) {
	t.Parallel()
	c, _ := newVerdicts(t, 10, time.Hour, time.Hour)
	c.Add("k", allow(sha256Digest("a")))
	v1, _ := c.Get("k")
	v1.Signers[0].Authority = "attacker"
	v2, _ := c.Get("k")
	if v2.Signers[0].Authority != "release" {
		t.Fatalf("cached signer changed through a returned verdict: %+v", v2.Signers[0])
	}
}

func TestVerdictsConcurrent(t *testing.T) {
	t.Parallel()
	c, clk := newVerdicts(t, 64, time.Minute, time.Second)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				k := fmt.Sprintf("k%d", (g*31+i)%100)
				want := sha256Digest(k)
				switch i % 5 {
				case 0:
					c.Add(k, deny(want))
				case 1:
					clk.Advance(time.Millisecond)
				case 4:
					if i%100 == 4 {
						c.Purge()
					}
				default:
					c.Add(k, allow(want))
				}
				if v, ok := c.Get(k); ok && v.Digest != want {
					t.Errorf("Get(%q) returned digest %s, want %s", k, v.Digest, want)
					return
				}
				if n := c.Len(); n > 64 {
					t.Errorf("Len = %d exceeds size 64", n)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkVerdictsMemory measures the heap a full cache of 100 000
// verdicts retains. Keys are 64-hex strings as the proxy builds them; each
// verdict carries freshly allocated strings, as one decoded from a
// certificate would, so that only the cache's own sharing is measured.
func BenchmarkVerdictsMemory(b *testing.B) {
	const n = 100_000
	var retained float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c, err := cache.NewVerdicts(n, time.Hour, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			key := sha256.Sum256(fmt.Appendf(nil, "fingerprint|docker.io|ml/model|%d", i))
			digest := sha256.Sum256(fmt.Appendf(nil, "manifest %d", i))
			c.Add(hex.EncodeToString(key[:]), verify.Verdict{
				Allowed:  true,
				Mode:     verify.ModeEnforce,
				Boundary: strings.Clone("models"),
				Digest:   "sha256:" + hex.EncodeToString(digest[:]),
				Signers: []verify.Signer{{
					Authority: strings.Clone("ci"),
					Kind:      strings.Clone("keyless"),
					Identity:  strings.Clone("https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main"),
					Issuer:    strings.Clone("https://token.actions.githubusercontent.com"),
					Evidence:  strings.Clone("sigstore-bundle"),
				}},
				CheckedAt: time.Now(),
			})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if c.Len() != n {
			b.Fatalf("Len = %d, want %d", c.Len(), n)
		}
		runtime.KeepAlive(c)
		retained += float64(after.HeapAlloc) - float64(before.HeapAlloc)
	}
	b.ReportMetric(retained/float64(b.N), "heap-bytes/100k")
	b.ReportMetric(retained/float64(b.N)/(1<<20), "MiB/100k")
}
