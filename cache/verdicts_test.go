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
	for _, tc := range []struct {
		name              string
		allowTTL, denyTTL time.Duration
		older, latest     verify.Verdict
	}{
		{"zero deny TTL", time.Hour, 0, allow(sha256Digest("x")), deny(sha256Digest("x"))},
		{"zero allow TTL", 0, time.Hour, deny(sha256Digest("x")), allow(sha256Digest("x"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := newVerdicts(t, 10, tc.allowTTL, tc.denyTTL)
			c.Add("k", tc.older)
			c.Add("k", tc.latest)
			if got, ok := c.Get("k"); ok {
				t.Fatalf("Get = %+v; a verdict whose TTL is zero must not be cached nor leave the older one behind", got)
			}
			c.Add("other", tc.latest)
			if n := c.Len(); n != 0 {
				t.Fatalf("Len = %d, want 0", n)
			}
		})
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
		// Each part held outside the fixed entry, alone, so that none of
		// them is kept only when another one is present.
		{"two signers only", func() verify.Verdict { v := allow(sha256Digest("s")); v.Signers = full.Signers[:2]; return v }()},
		{"attestations only", attested(sha256Digest("at"))},
		{"lineage only", func() verify.Verdict { v := allow(sha256Digest("l")); v.Lineage = full.Lineage; return v }()},
		{"artifact only", func() verify.Verdict { v := allow(sha256Digest("m")); v.Artifact = "model"; return v }()},
		{"long digest", allow(sha256Digest("long") + "00")},
		{"empty slices", func() verify.Verdict {
			v := deny(sha256Digest("e"))
			v.Signers, v.Reasons, v.Lineage, v.Attestations = []verify.Signer{}, []string{}, []verify.Dependency{}, []verify.AttestationResult{}
			return v
		}()},
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

func attested(digest string) verify.Verdict {
	v := allow(digest)
	v.Attestations = []verify.AttestationResult{{
		Rule:          "provenance",
		PredicateType: "https://slsa.dev/provenance/v1",
		Name:          "slsa-provenance",
		Signer:        verify.Signer{Authority: "ci", Kind: "keyless", Identity: "https://github.com/acme/m/.github/workflows/r.yml@refs/heads/main", Evidence: "sigstore-bundle"},
		Time:          time.Date(2025, 1, 2, 3, 0, 0, 0, time.UTC),
	}}
	return v
}

// Signers and attestations are held in compact form and rebuilt on every
// Get, so neither the caller that added a verdict nor one that read it can
// change what the next caller sees by writing into its copy.
func TestVerdictsSignersAndAttestationsAreCopies(t *testing.T) {
	t.Parallel()
	c, _ := newVerdicts(t, 10, time.Hour, time.Hour)
	want := attested(sha256Digest("a"))
	in := attested(sha256Digest("a"))
	c.Add("k", in)
	in.Signers[0].Authority = "attacker"
	in.Attestations[0].Rule, in.Attestations[0].Signer.Identity = "forged", "attacker"

	v1, _ := c.Get("k")
	v1.Signers[0].Authority = "attacker"
	v1.Attestations[0].Rule, v1.Attestations[0].Signer.Identity = "forged", "attacker"
	if v2, _ := c.Get("k"); !reflect.DeepEqual(v2, want) {
		t.Fatalf("cached verdict changed through a caller's copy:\n got  %+v\n want %+v", v2, want)
	}
}

// Reasons and Lineage are shared with the cache rather than copied, but
// without spare capacity: two callers appending to the slices they got back
// must each get their own array, not write into one another's.
func TestVerdictsAppendToReturnedSlices(t *testing.T) {
	t.Parallel()
	v := deny(sha256Digest("a"))
	v.Reasons = append(make([]string, 0, 8), "no valid signature")
	v.Lineage = append(make([]verify.Dependency, 0, 8), verify.Dependency{Name: "dataset", URI: "git+https://example.com/d"})
	c, _ := newVerdicts(t, 10, time.Hour, time.Hour)
	c.Add("k", v)
	in := append(v.Reasons, "added by the caller")
	inDeps := append(v.Lineage, verify.Dependency{Name: "added by the caller"})

	g1, _ := c.Get("k")
	r1, d1 := append(g1.Reasons, "first"), append(g1.Lineage, verify.Dependency{Name: "first"})
	g2, _ := c.Get("k")
	r2, d2 := append(g2.Reasons, "second"), append(g2.Lineage, verify.Dependency{Name: "second"})
	for _, tc := range []struct{ name, got, want string }{
		{"caller's reasons", in[1], "added by the caller"},
		{"caller's lineage", inDeps[1].Name, "added by the caller"},
		{"first reader's reasons", r1[1], "first"},
		{"first reader's lineage", d1[1].Name, "first"},
		{"second reader's reasons", r2[1], "second"},
		{"second reader's lineage", d2[1].Name, "second"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: appended element is %q, want %q", tc.name, tc.got, tc.want)
		}
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

// FuzzVerdictsDigestRoundTrip: a sha256 digest is held as raw bytes only
// when that spells it back exactly; every other string must come back as
// it was given.
func FuzzVerdictsDigestRoundTrip(f *testing.F) {
	d := sha256Digest("seed")
	for _, seed := range []string{
		d, "", "sha256:", "sha256", d[:len(d)-1], d + "0", "sha256:" + strings.ToUpper(d[7:]),
		"sha512:" + strings.Repeat("ab", 64), "SHA256:" + d[7:], "sha256:sha256:" + d[14:], d[7:], "sha256:" + strings.Repeat("g", 64),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, digest string) {
		c, _ := newVerdicts(t, 1, time.Hour, time.Hour)
		c.Add("k", allow(digest))
		if got, ok := c.Get("k"); !ok || got.Digest != digest {
			t.Fatalf("Get = %q, %v; want %q", got.Digest, ok, digest)
		}
	})
}

// BenchmarkVerdictsMemory measures the heap a full cache of 100 000
// verdicts retains. Keys are 64-hex strings as the proxy builds them; each
// verdict carries freshly allocated strings, as one decoded from a
// certificate would, so that only the cache's own sharing is measured.
// "image" is the common case, one keyless signer; "model" adds what a
// model boundary records: its artifact kind and two attestations.
func BenchmarkVerdictsMemory(b *testing.B) {
	signer := func() verify.Signer {
		return verify.Signer{
			Authority: strings.Clone("ci"),
			Kind:      strings.Clone("keyless"),
			Identity:  strings.Clone("https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main"),
			Issuer:    strings.Clone("https://token.actions.githubusercontent.com"),
			Evidence:  strings.Clone("sigstore-bundle"),
		}
	}
	image := func(i int) verify.Verdict {
		digest := sha256.Sum256(fmt.Appendf(nil, "manifest %d", i))
		return verify.Verdict{
			Allowed:   true,
			Mode:      verify.ModeEnforce,
			Boundary:  strings.Clone("models"),
			Digest:    "sha256:" + hex.EncodeToString(digest[:]),
			Signers:   []verify.Signer{signer()},
			CheckedAt: time.Now(),
		}
	}
	model := func(i int) verify.Verdict {
		v := image(i)
		v.Artifact = strings.Clone("model")
		v.Attestations = []verify.AttestationResult{
			{Rule: strings.Clone("provenance"), PredicateType: strings.Clone("https://slsa.dev/provenance/v1"), Name: strings.Clone("slsa-provenance"), Signer: signer(), Time: time.Now()},
			{Rule: strings.Clone("model-signing"), PredicateType: strings.Clone("https://model_signing/signature/v1.0"), Name: strings.Clone("model-signing"), Signer: signer(), Time: time.Now()},
		}
		return v
	}
	for _, bc := range []struct {
		name    string
		verdict func(int) verify.Verdict
	}{{"image", image}, {"model", model}} {
		b.Run(bc.name, func(b *testing.B) {
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
					c.Add(hex.EncodeToString(key[:]), bc.verdict(i))
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
		})
	}
}

// TestVerdictsRoundTripEveryField fills every exported field of a Verdict,
// recursively, with a distinct non-zero value and requires Get to return it
// unchanged. It is built by reflection so that a field added to Verdict (or
// to anything it holds) is covered without editing this test: a cache that
// forgets to keep it fails here.
func TestVerdictsRoundTripEveryField(t *testing.T) {
	t.Parallel()
	var full verify.Verdict
	f := filler{t: t}
	f.fill(reflect.ValueOf(&full).Elem(), "Verdict", 0)
	// The compact entry holds a sha256 digest as raw bytes and everything
	// else verbatim; both paths must keep every field.
	withSHA256 := full
	withSHA256.Digest = sha256Digest("every field")
	for _, tc := range []struct {
		name string
		v    verify.Verdict
	}{
		{"opaque digest", full},
		{"sha256 digest", withSHA256},
		{"denied", func() verify.Verdict { v := full; v.Allowed = false; return v }()},
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
				gv, wv := reflect.ValueOf(got), reflect.ValueOf(tc.v)
				for i := range wv.NumField() {
					if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
						t.Errorf("field %s lost in the cache:\n got  %+v\n want %+v",
							wv.Type().Field(i).Name, gv.Field(i).Interface(), wv.Field(i).Interface())
					}
				}
				t.Fatal("round trip changed the verdict")
			}
		})
	}
}

// filler sets every exported field reachable from a value to a non-zero
// value distinct from all others, and fails the test on a kind it cannot
// fill, so that an unfillable new field is noticed rather than skipped.
type filler struct {
	t *testing.T
	n int
}

// maxFillDepth bounds the recursion through pointers (a Dependency holds a
// *Verdict): deep enough to fill a nested verdict completely.
const maxFillDepth = 3

var timeType = reflect.TypeFor[time.Time]()

func (f *filler) fill(v reflect.Value, path string, depth int) {
	f.t.Helper()
	f.n++
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(time.Date(2025, 1, 2, 3, 4, f.n, f.n, time.UTC)))
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.String:
		v.SetString(fmt.Sprintf("%s-%d", path, f.n))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(f.n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(f.n))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(f.n) + 0.5)
	case reflect.Slice:
		// Two elements, so that code keeping only the first is caught.
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			f.fill(s.Index(i), fmt.Sprintf("%s[%d]", path, i), depth)
		}
		v.Set(s)
	case reflect.Array:
		for i := range v.Len() {
			f.fill(v.Index(i), fmt.Sprintf("%s[%d]", path, i), depth)
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		f.fill(k, path+".key", depth)
		f.fill(e, path+".value", depth)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		if depth >= maxFillDepth {
			return
		}
		p := reflect.New(v.Type().Elem())
		f.fill(p.Elem(), path, depth+1)
		v.Set(p)
	case reflect.Struct:
		for i := range v.NumField() {
			sf := v.Type().Field(i)
			if !sf.IsExported() {
				f.t.Fatalf("%s.%s: cannot fill an unexported field", path, sf.Name)
			}
			f.fill(v.Field(i), path+"."+sf.Name, depth)
			if v.Field(i).IsZero() && !(sf.Type.Kind() == reflect.Pointer && depth >= maxFillDepth) {
				f.t.Fatalf("%s.%s is still zero", path, sf.Name)
			}
		}
	default:
		f.t.Fatalf("%s: cannot fill a %s", path, v.Kind())
	}
}
