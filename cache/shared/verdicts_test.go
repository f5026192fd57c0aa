package shared

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
)

var _ proxy.VerdictCache = (*Verdicts)(nil)

const (
	testAllowTTL = 10 * time.Minute
	testDenyTTL  = time.Minute
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// replica is one proxy's view: its own local cache, client and guard.
type replica struct {
	*Verdicts
	guard *Guard
	logs  *observer.ObservedLogs
}

func newReplica(t *testing.T, mr *miniredis.Miniredis, clk *clock) replica {
	t.Helper()
	rdb, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	core, logs := observer.New(zap.InfoLevel)
	g := NewGuard(zap.New(core), nil, time.Second)
	g.now = clk.now
	l1, err := cache.NewVerdicts(100, testAllowTTL, testDenyTTL)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerdicts(l1, rdb, g, VerdictsOptions{AllowTTL: testAllowTTL, DenyTTL: testDenyTTL, Size: 100, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	return replica{Verdicts: v, guard: g, logs: logs}
}

func allowed(boundary, digest string) verify.Verdict {
	return verify.Verdict{
		Allowed: true, Mode: verify.ModeEnforce, Boundary: boundary, Digest: digest,
		Signers:   []verify.Signer{{Authority: "release", Kind: "key", KeyID: "ab12", Evidence: "sigstore-bundle"}},
		CheckedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func denied(boundary, digest string) verify.Verdict {
	return verify.Verdict{Mode: verify.ModeEnforce, Boundary: boundary, Digest: digest, Reasons: []string{"no signature"},
		CheckedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

const (
	dig1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	dig2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func invalid(r replica) float64 {
	return testutil.ToFloat64(r.guard.errs.WithLabelValues("verdict_get", "invalid"))
}

func TestVerdictSharedBetweenReplicas(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	if _, ok := b.Get("k1"); ok {
		t.Fatal("hit before any Add")
	}
	want := allowed("prod", dig1)
	a.Add("k1", want)
	got, ok := b.Get("k1")
	if !ok {
		t.Fatal("Add on one replica is not a hit on the other")
	}
	if got.Allowed != want.Allowed || got.Digest != want.Digest || got.Boundary != want.Boundary ||
		len(got.Signers) != 1 || got.Signers[0] != want.Signers[0] || !got.CheckedAt.Equal(want.CheckedAt) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if ttl := mr.TTL(DefaultKeyPrefix + "v1:verdict:k1"); ttl != testAllowTTL {
		t.Errorf("allow TTL in redis = %v, want %v", ttl, testAllowTTL)
	}
	a.Add("k2", denied("prod", dig2))
	if ttl := mr.TTL(DefaultKeyPrefix + "v1:verdict:k2"); ttl != testDenyTTL {
		t.Errorf("deny TTL in redis = %v, want %v", ttl, testDenyTTL)
	}
	if got, ok := b.Get("k2"); !ok || got.Allowed || got.Reasons[0] != "no signature" {
		t.Fatalf("shared denial = %+v, %v", got, ok)
	}
	if n := invalid(b); n != 0 {
		t.Errorf("%v values refused", n)
	}
}

func TestVerdictTTLs(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	a.Add("allow", allowed("prod", dig1))
	a.Add("deny", denied("prod", dig2))

	clk.add(9 * time.Minute)
	mr.FastForward(9 * time.Minute)
	if _, ok := b.Get("deny"); ok {
		t.Error("denial read after its deny TTL")
	}
	if _, ok := b.Get("allow"); !ok {
		t.Fatal("allow missing before its TTL")
	}
	// b's local copy lives for what the value had left (1m), not for a
	// fresh allow TTL: remove the redis copy and step past its expiry.
	mr.Del(DefaultKeyPrefix + "v1:verdict:allow")
	if _, ok := b.Get("allow"); !ok {
		t.Fatal("local copy of a shared verdict not kept")
	}
	clk.add(2 * time.Minute)
	if _, ok := b.Get("allow"); ok {
		t.Error("local copy of a shared verdict outlived the value's expiry")
	}
}

func TestVerdictTTLClampedToKind(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	// A document claiming a lifetime far beyond the deny TTL is kept
	// locally no longer than the deny TTL.
	a.Add("deny", denied("prod", dig2))
	raw, _ := mr.Get(DefaultKeyPrefix + "v1:verdict:deny")
	exp := clk.now().Add(testDenyTTL).UnixMilli()
	long := strings.Replace(raw, itoa(exp), itoa(clk.now().Add(1000*time.Hour).UnixMilli()), 1)
	if long == raw {
		t.Fatalf("expiry %d not found in %s", exp, raw)
	}
	_ = mr.Set(DefaultKeyPrefix+"v1:verdict:deny", long)
	if _, ok := b.Get("deny"); !ok {
		t.Fatal("miss")
	}
	mr.Del(DefaultKeyPrefix + "v1:verdict:deny")
	clk.add(testDenyTTL + time.Second)
	if _, ok := b.Get("deny"); ok {
		t.Error("a claimed lifetime beyond the deny TTL was honoured")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestVerdictBoundToKey(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	a.Add("policyA/up/repo/"+dig1, allowed("prod", dig1))
	raw, err := mr.Get(DefaultKeyPrefix + "v1:verdict:policyA/up/repo/" + dig1)
	if err != nil {
		t.Fatal(err)
	}
	// A valid allow copied under the key of an unsigned digest.
	_ = mr.Set(DefaultKeyPrefix+"v1:verdict:policyA/up/repo/"+dig2, raw)
	if v, ok := b.Get("policyA/up/repo/" + dig2); ok {
		t.Fatalf("value planted under another key taken: %+v", v)
	}
	if n := invalid(b); n != 1 {
		t.Errorf("refusals counted = %v, want 1", n)
	}
	if n := b.logs.FilterMessageSnippet("value refused").Len(); n != 1 {
		t.Errorf("refusal logged %d times, want 1", n)
	}
	// The original is still good.
	if _, ok := b.Get("policyA/up/repo/" + dig1); !ok {
		t.Error("the genuine value was refused")
	}
}

func TestVerdictMalformed(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a := newReplica(t, mr, clk)
	a.Add("good", allowed("prod", dig1))
	good, _ := mr.Get(DefaultKeyPrefix + "v1:verdict:good")
	// Turn the genuine value for "good" into the genuine value for "k".
	forK := strings.Replace(good, verdictBinding("good"), verdictBinding("k"), 1)
	cases := map[string]string{
		"not json":        "garbage",
		"empty":           "",
		"unknown field":   strings.Replace(forK, `{"v":1,`, `{"v":1,"admin":true,`, 1),
		"unknown nested":  strings.Replace(forK, `"allowed":true`, `"allowed":true,"force":true`, 1),
		"trailing data":   forK + `{}`,
		"other version":   strings.Replace(forK, `{"v":1,`, `{"v":2,`, 1),
		"no verdict":      `{"v":1,"k":"` + verdictBinding("k") + `","exp":` + itoa(clk.now().Add(time.Minute).UnixMilli()) + `}`,
		"no expiry":       strings.Replace(forK, `"exp":`, `"exq":`, 1),
		"reasonless deny": strings.Replace(forK, `"allowed":true`, `"allowed":false`, 1),
		"oversized":       forK[:len(forK)-1] + strings.Repeat(" ", DefaultMaxValueBytes) + "}",
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newReplica(t, mr, clk)
			// Each case has its own key, all under one miniredis.
			key := "k/" + name
			val := strings.Replace(raw, verdictBinding("k"), verdictBinding(key), 1)
			_ = mr.Set(DefaultKeyPrefix+"v1:verdict:"+key, val)
			if v, ok := b.Get(key); ok {
				t.Fatalf("malformed value taken: %+v", v)
			}
			if n := invalid(b); n != 1 {
				t.Errorf("refusals counted = %v, want 1", n)
			}
		})
	}
	// Control: the unaltered value for k is taken, so the cases above fail
	// for their alteration alone.
	b := newReplica(t, mr, clk)
	_ = mr.Set(DefaultKeyPrefix+"v1:verdict:k", forK)
	if _, ok := b.Get("k"); !ok {
		t.Fatal("control value refused")
	}
	// The bound is exact: the same value padded with white space to
	// DefaultMaxValueBytes is taken, one byte more is refused.
	atBound := forK + strings.Repeat(" ", DefaultMaxValueBytes-len(forK))
	for _, tc := range []struct {
		val  string
		want bool
	}{{atBound, true}, {atBound + " ", false}} {
		c := newReplica(t, mr, clk)
		_ = mr.Set(DefaultKeyPrefix+"v1:verdict:k", tc.val)
		if _, ok := c.Get("k"); ok != tc.want {
			t.Errorf("a value of %d bytes (limit %d) taken: %v, want %v", len(tc.val), DefaultMaxValueBytes, ok, tc.want)
		}
	}
}

func TestVerdictRedisDownAndBack(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	a.Add("k1", allowed("prod", dig1))
	restart := redistest.Outage(t, mr)

	if _, ok := a.Get("k1"); !ok {
		t.Fatal("L1 does not serve while redis is down")
	}
	if _, ok := b.Get("k1"); ok {
		t.Fatal("hit from a redis that is down")
	}
	a.Add("k2", allowed("prod", dig2))
	if _, ok := a.Get("k2"); !ok {
		t.Fatal("Add did not store locally while redis is down")
	}
	for range 5 {
		b.Get("k3")
	}
	if b.guard.Healthy() || !strings.Contains(b.guard.Detail(), "redis unavailable") {
		t.Errorf("outage not visible: healthy %v, detail %q", b.guard.Healthy(), b.guard.Detail())
	}
	if n := b.logs.FilterMessageSnippet("unavailable").Len(); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	errs := testutil.ToFloat64(b.guard.errs.WithLabelValues("verdict_get", "error")) +
		testutil.ToFloat64(b.guard.errs.WithLabelValues("verdict_get", "timeout"))
	skipped := testutil.ToFloat64(b.guard.errs.WithLabelValues("verdict_get", "unavailable"))
	if errs != circuitFailures || skipped != 6-circuitFailures {
		t.Errorf("failures counted %v, skipped %v; want %d and %d", errs, skipped, circuitFailures, 6-circuitFailures)
	}
	if _, ok := b.Get("k1"); ok {
		t.Fatal("hit while the circuit is open")
	}

	restart()
	clk.add(circuitBackoff)
	if _, ok := b.Get("k1"); !ok {
		t.Fatal("sharing did not resume after redis returned")
	}
	if !b.guard.Healthy() || b.guard.Detail() != "" {
		t.Errorf("still degraded after recovery: %q", b.guard.Detail())
	}
	if n := b.logs.FilterMessageSnippet("reachable again").Len(); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	// What a stored while redis was down was never shared; its next Add is.
	if _, ok := b.Get("k2"); ok {
		t.Error("k2 shared though redis was down when it was added")
	}
}

func TestVerdictRemove(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	a.Add("k1", allowed("prod", dig1))
	a.Add("k2", allowed("dev", dig2))
	a.Add("k3", allowed("prod", dig2))
	_ = mr.Set(DefaultKeyPrefix+"v1:verdict:junk", "garbage")
	_ = mr.Set("other-app:key", "kept")
	if _, ok := b.Get("k1"); !ok {
		t.Fatal("miss")
	}
	byBoundary := func(v verify.Verdict) bool { return v.Boundary == "prod" }
	if n := a.RemoveFunc(byBoundary); n != 2 {
		t.Errorf("RemoveFunc removed %d locally, want 2", n)
	}
	for _, k := range []string{"k1", "k3", "junk"} {
		if mr.Exists(DefaultKeyPrefix + "v1:verdict:" + k) {
			t.Errorf("%s still in redis", k)
		}
	}
	if !mr.Exists(DefaultKeyPrefix+"v1:verdict:k2") || !mr.Exists("other-app:key") {
		t.Error("RemoveFunc removed what it did not match")
	}
	if _, ok := a.Get("k1"); ok {
		t.Error("removed verdict still served locally")
	}
	if n := b.RemoveFunc(byBoundary); n != 1 {
		t.Errorf("RemoveFunc on b removed %d, want its local copy of k1", n)
	}
	if _, ok := b.Get("k1"); ok {
		t.Error("b still serves k1")
	}
	a.Remove("k2")
	if mr.Exists(DefaultKeyPrefix + "v1:verdict:k2") {
		t.Error("Remove left the redis copy")
	}
	if _, ok := b.Get("k2"); ok {
		t.Error("removed verdict still shared")
	}
}

func TestVerdictNotCachedKindDropsShared(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a := newReplica(t, mr, clk)
	a.Add("k", allowed("prod", dig1))
	c, err := NewVerdicts(mustL1(t, 0), a.rdb, a.guard, VerdictsOptions{AllowTTL: testAllowTTL, DenyTTL: 0, Size: 1, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	c.Add("k", denied("prod", dig1))
	if mr.Exists(DefaultKeyPrefix + "v1:verdict:k") {
		t.Error("an uncached denial left an older shared allow in place")
	}
}

func mustL1(t *testing.T, denyTTL time.Duration) *cache.Verdicts {
	t.Helper()
	l1, err := cache.NewVerdicts(10, testAllowTTL, denyTTL)
	if err != nil {
		t.Fatal(err)
	}
	return l1
}

func TestGuard(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Now()}
	g := NewGuard(nil, nil, time.Second)
	g.now = clk.now
	boom := errors.New("boom")
	fail := func(context.Context) error { return boom }
	calls := 0
	ok := func(context.Context) error { calls++; return nil }

	// A client that hung up says nothing of redis.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range circuitFailures {
		_ = g.Do(ctx, "op", func(ctx context.Context) error { return ctx.Err() })
	}
	if !g.Healthy() {
		t.Fatal("client cancellations opened the circuit")
	}
	for range circuitFailures {
		if err := g.Do(context.Background(), "op", fail); !errors.Is(err, boom) {
			t.Fatalf("Do = %v", err)
		}
	}
	if err := g.Do(context.Background(), "op", ok); !errors.Is(err, ErrUnavailable) || calls != 0 {
		t.Fatalf("open circuit: Do = %v after %d calls", err, calls)
	}
	clk.add(circuitBackoff)
	if err := g.Do(context.Background(), "op", fail); !errors.Is(err, boom) {
		t.Fatalf("half-open Do = %v", err)
	}
	if err := g.Do(context.Background(), "op", ok); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a failed retry did not reopen the circuit: %v", err)
	}
	clk.add(circuitBackoff)
	if err := g.Do(context.Background(), "op", ok); err != nil || calls != 1 || !g.Healthy() {
		t.Fatalf("recovery: %v, %d calls, healthy %v", err, calls, g.Healthy())
	}
	var deadline bool
	_ = g.Do(context.Background(), "op", func(ctx context.Context) error { _, deadline = ctx.Deadline(); return nil })
	if !deadline {
		t.Error("calls are not bounded by a deadline")
	}
}

// FuzzVerdictDecode: no input panics the parser, and whatever it accepts
// was bound to the key it was read for.
func FuzzVerdictDecode(f *testing.F) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	if c, err := NewVerdicts(mustL1F(f), nil, nil, VerdictsOptions{}); err == nil || c != nil {
		f.Fatal("NewVerdicts accepted no redis")
	}
	v := &Verdicts{allowTTL: testAllowTTL, denyTTL: testDenyTTL, maxValue: DefaultMaxValueBytes}
	exp := strconv.FormatInt(clk.now().Add(time.Minute).UnixMilli(), 10)
	f.Add("k", `{"v":1,"k":"`+verdictBinding("k")+`","exp":`+exp+`,"verdict":{"allowed":true,"mode":"enforce","boundary":"b","digest":"`+dig1+`","checked_at":"2026-01-01T00:00:00Z"}}`)
	f.Add("k", `{"v":1,"k":"`+verdictBinding("other")+`","exp":`+exp+`,"verdict":{"allowed":true}}`)
	f.Add("k", `{"v":1,"k":"`+verdictBinding("k")+`","exp":`+exp+`,"verdict":{"allowed":false,"reasons":["r"],"lineage":[{"name":"n","uri":"u","verdict":{"allowed":true}}]}}`)
	f.Add("k", `[]`)
	f.Fuzz(func(t *testing.T, key, raw string) {
		got, expires, err := v.decode(key, []byte(raw), clk.now())
		if err != nil {
			return
		}
		var d verdictDoc
		if json.Unmarshal([]byte(raw), &d) != nil || d.K != verdictBinding(key) {
			t.Fatalf("accepted a value not bound to %q", key)
		}
		ttl := testDenyTTL
		if got.Allowed {
			ttl = testAllowTTL
		}
		if expires.After(clk.now().Add(ttl)) {
			t.Fatalf("accepted a lifetime beyond the TTL: %v", expires)
		}
	})
}

func mustL1F(f *testing.F) *cache.Verdicts {
	l1, err := cache.NewVerdicts(10, testAllowTTL, testDenyTTL)
	if err != nil {
		f.Fatal(err)
	}
	return l1
}

// TestVerdictGetLocalNeverAsksRedis: GetLocal answers from this replica's
// own verdicts and the copies it read, never from Redis, and a copy it
// read stops answering when it expires.
func TestVerdictGetLocalNeverAsksRedis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newReplica(t, mr, clk), newReplica(t, mr, clk)
	a.Add("k1", allowed("prod", dig1))
	if _, ok := a.GetLocal("k1"); !ok {
		t.Fatal("own verdict is not local")
	}
	if _, ok := b.GetLocal("k1"); ok {
		t.Fatal("GetLocal answered from Redis")
	}
	if _, ok := b.Get("k1"); !ok {
		t.Fatal("Get missed the shared verdict")
	}
	redistest.Down(t, mr)
	if got, ok := b.GetLocal("k1"); !ok || got.Digest != dig1 {
		t.Fatalf("the copy read from Redis is not local: %+v, %v", got, ok)
	}
	clk.add(testAllowTTL + time.Second)
	if _, ok := b.GetLocal("k1"); ok {
		t.Error("an expired copy still answers")
	}
}
